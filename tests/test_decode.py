from __future__ import annotations

import io
import pickle
import subprocess
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageFile

from moderator.decode import (
    BACKGROUND,
    CropSpec,
    DecodedImage,
    DecodeError,
    DecodeFailure,
    FrameRequest,
    crop_frame,
    decode_frames,
    decode_image,
    frame_for_scorers,
    frame_indices,
    to_rgb,
)
from moderator.decode import image as decode_module
from moderator.settings import Settings
from tests.hostile import (
    BLUE,
    CATALOGUE,
    FRAME_COLOURS,
    GREEN,
    OK,
    RED,
    Expected,
    encode,
    huge_header_png,
    jpeg_claiming,
    noise,
)

LIMIT = Settings.model_fields["max_image_pixels"].default
BOMB_WARNING = "ignore::PIL.Image.DecompressionBombWarning"  # warn-range-header.png makes Pillow warn first


def outcome(data: bytes, **kw: int) -> Expected:
    try:
        decode_image(data, max_pixels=LIMIT, **kw)
    except DecodeError as e:
        return e.reason
    return OK


def decoded(name: str, **kw: int) -> DecodedImage:
    return decode_image(CATALOGUE[name].build(), max_pixels=LIMIT, **kw)


def rgb_at(img: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    value = img.getpixel(xy)
    assert isinstance(value, tuple)
    return value


def near(pixel: tuple[int, ...], want: tuple[int, ...], tol: int = 8) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(pixel, want, strict=True))


@pytest.mark.filterwarnings(BOMB_WARNING)
@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_catalogue_outcome(name: str) -> None:
    build, expected = CATALOGUE[name]
    data = build()
    if expected == OK:
        result = decode_image(data, max_pixels=LIMIT)
        assert result.frames and all(f.mode == "RGB" for f in result.frames)
        # Frames are plain in-memory images, not lazily-read files tied to the input.
        assert not any(isinstance(f, ImageFile.ImageFile) for f in result.frames)
        assert result.n_frames >= len(result.frames)
    else:
        with pytest.raises(DecodeError) as info:
            decode_image(data, max_pixels=LIMIT)
        assert info.value.reason == expected, str(info.value)
        message = str(info.value)
        assert message and "\n" not in message


@pytest.mark.filterwarnings(BOMB_WARNING)
@pytest.mark.parametrize("name", ["huge-header.png", "warn-range-header.png", "bomb-20000x20000-1bit.png", "bomb.gif"])
def test_bombs_are_refused_before_any_pixel_is_read(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pixels(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were read")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_pixels)
    assert outcome(CATALOGUE[name].build()) == DecodeFailure.too_many_pixels


def test_pixel_limit_is_the_callers() -> None:
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    assert decode_image(data, max_pixels=10_000).width == 100
    with pytest.raises(DecodeError) as info:
        decode_image(data, max_pixels=9_999)
    assert info.value.reason == DecodeFailure.too_many_pixels
    assert "MODERATOR_MAX_IMAGE_PIXELS" in str(info.value)


@pytest.mark.filterwarnings(BOMB_WARNING)
def test_pillow_bomb_warning_is_an_error_even_with_a_higher_limit() -> None:
    # 10000x10000 is below a 10**12 limit but above Pillow's warning threshold.
    with pytest.raises(DecodeError) as info:
        decode_image(huge_header_png(10_000), max_pixels=10**12)
    assert info.value.reason == DecodeFailure.too_many_pixels


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_bomb_warning_raised_as_exception_is_still_a_decode_error() -> None:
    with pytest.raises(DecodeError) as info:
        decode_image(huge_header_png(10_000), max_pixels=10**12)
    assert info.value.reason == DecodeFailure.too_many_pixels


def test_tiff_pages_beyond_the_sample_are_not_read() -> None:
    # Only page 1 (2x2) is sampled with max_frames=1, so the oversized page 2 is never opened.
    result = decoded("huge-second-page.tif", max_frames=1)
    assert (result.n_frames, result.frames[0].size) == (2, (2, 2))


def test_postscript_never_runs_an_external_program(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("an external program was started")

    for name in ("Popen", "run", "check_call", "check_output"):
        monkeypatch.setattr(subprocess, name, forbidden)
    assert outcome(CATALOGUE["postscript.eps"].build()) == DecodeFailure.unsupported_format


@pytest.mark.parametrize("name", ["gray16.png", "gray16.tif", "float.tif"])
def test_deep_grayscale_is_scaled_not_clipped(name: str) -> None:
    frame = decoded(name).frames[0]
    assert near(rgb_at(frame, (0, 0)), (128, 128, 128), 1)  # 16-bit / float mid-gray
    assert rgb_at(frame, (7, 0)) == (255, 255, 255)


def test_16_bit_rgb_keeps_its_colour() -> None:
    assert near(rgb_at(decoded("rgb16.png").frames[0], (3, 3)), (128, 0, 255), 1)


def test_cmyk_red_becomes_red() -> None:
    assert near(rgb_at(decoded("cmyk.jpg").frames[0], (8, 8)), RED, 40)


def test_transparent_palette_pixel_becomes_the_background() -> None:
    frame = decoded("palette-transparent.png").frames[0]
    assert (rgb_at(frame, (0, 0)), rgb_at(frame, (3, 0))) == (BACKGROUND, GREEN)


def test_la_alpha_is_composited_onto_the_background() -> None:
    frame = decoded("la.png").frames[0]
    assert (rgb_at(frame, (0, 0)), rgb_at(frame, (3, 0))) == ((0, 0, 0), BACKGROUND)


def test_half_transparent_pixels_blend_with_the_background() -> None:
    data = encode(Image.new("RGBA", (2, 2), (255, 255, 255, 128)), "PNG")
    assert near(rgb_at(decode_image(data, max_pixels=LIMIT).frames[0], (0, 0)), (192, 192, 192), 2)


@pytest.mark.parametrize(
    ("values", "mode", "want"),
    [
        ([-1000, 0, 1000], "I", [0, 128, 255]),  # outside 16 bits: the range found is stretched
        ([0.0, 50.0, 100.0], "F", [0, 128, 255]),
        ([0.0, 0.25, 1.0], "F", [0, 64, 255]),  # normalised floats are taken as 0..1
    ],
)
def test_wide_ranges_are_stretched_to_8_bit(values: list[float], mode: str, want: list[int]) -> None:
    dtype = np.int32 if mode == "I" else np.float32
    img = Image.fromarray(np.array([values], dtype=dtype))
    assert img.mode == mode
    assert [rgb_at(to_rgb(img), (x, 0))[0] for x in range(3)] == want


def test_exif_orientation_is_applied() -> None:
    result = decoded("exif-rotated.jpg")
    frame = result.frames[0]
    assert frame.size == (20, 40) and (result.width, result.height) == (20, 40)
    assert near(rgb_at(frame, (10, 5)), BLUE, 40)  # the stored left half is now on top
    assert near(rgb_at(frame, (10, 35)), RED, 40)


@pytest.mark.parametrize("name", ["animated.gif", "animated.png", "animated.webp"])
@pytest.mark.parametrize(("max_frames", "indices"), [(4, [0, 2, 3, 5]), (1, [0]), (10, [0, 1, 2, 3, 4, 5])])
def test_animated_frames_are_sampled_evenly(name: str, max_frames: int, indices: list[int]) -> None:
    result = decoded(name, max_frames=max_frames)
    assert result.n_frames == 6
    assert [rgb_at(f, (8, 8)) for f in result.frames] == [FRAME_COLOURS[i] for i in indices]


@pytest.mark.parametrize(
    ("n_frames", "max_frames", "want"),
    [(1, 4, [0]), (3, 4, [0, 1, 2]), (6, 4, [0, 2, 3, 5]), (100, 4, [0, 33, 66, 99]), (5, 1, [0]), (2, 2, [0, 1])],
)
def test_frame_indices(n_frames: int, max_frames: int, want: list[int]) -> None:
    assert frame_indices(n_frames, max_frames) == want


def test_jpeg_draft_decodes_at_a_reduced_scale_keeping_the_shortest_side() -> None:
    data = encode(Image.new("RGB", (4000, 3000), (100, 150, 200)), "JPEG", quality=70)
    result = decode_image(data, max_pixels=LIMIT, draft_size=224)
    frame = result.frames[0]
    assert 224 <= min(frame.size) <= 500  # 1/8 scale: 500x375
    assert (result.width, result.height) == (4000, 3000)
    assert near(rgb_at(frame, (10, 10)), (100, 150, 200))


def test_draft_never_enlarges_nor_touches_other_formats() -> None:
    small = encode(noise((100, 80)), "JPEG")
    assert decode_image(small, max_pixels=LIMIT, draft_size=224).frames[0].size == (100, 80)
    png = encode(noise((600, 400)), "PNG")
    assert decode_image(png, max_pixels=LIMIT, draft_size=224).frames[0].size == (600, 400)


def test_unexpected_errors_come_out_as_corrupt(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(img: Image.Image) -> Image.Image:
        raise RuntimeError("boom")

    monkeypatch.setattr(decode_module, "to_rgb", boom)
    with pytest.raises(DecodeError) as info:
        decoded("photo.jpg")
    assert info.value.reason == DecodeFailure.corrupt and "boom" in str(info.value)


@pytest.mark.filterwarnings(BOMB_WARNING)
def test_concurrent_decoding_gives_the_same_outcomes_and_leaves_globals_alone() -> None:
    names = sorted(CATALOGUE) * 2
    blobs = [CATALOGUE[n].build() for n in names]
    filters_before, limit_before = list(warnings.filters), Image.MAX_IMAGE_PIXELS
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(outcome, blobs))
    assert outcomes == [CATALOGUE[n].expected for n in names]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert limit_before == Image.MAX_IMAGE_PIXELS
    assert list(warnings.filters) == filters_before


def test_decode_error_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(DecodeError(DecodeFailure.truncated, "cut short")))
    assert (error.reason, str(error)) == (DecodeFailure.truncated, "cut short")


# --- JPEG scans shorter than their header (libjpeg pads them silently) ---------------------------


def _pillow_pixels(data: bytes, draft: int | None) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        if draft:
            img.draft("RGB", (draft, draft))
        return np.asarray(img.convert("RGB"))


@pytest.mark.parametrize(
    ("image", "params"),
    [
        (noise((300, 200)), {}),
        (noise((300, 200)), {"progressive": True}),
        (noise((301, 199)), {"restart_marker_blocks": 3}),
        (noise((64, 64)), {"subsampling": 0, "quality": 5}),
        (Image.new("L", (3000, 2000), 77), {}),
        (Image.new("CMYK", (33, 17), (0, 255, 255, 0)), {}),
        (Image.new("RGB", (2000, 1500), (10, 200, 30)), {"progressive": True}),
    ],
    ids=["baseline", "progressive", "restart-markers", "444-q5", "gray", "cmyk", "flat-progressive"],
)
@pytest.mark.parametrize("draft", [None, 224])
def test_complete_jpegs_decode_to_exactly_pillows_pixels(image: Image.Image, params: dict, draft: int | None) -> None:
    data = encode(image, "JPEG", **params)
    frame = decode_image(data, max_pixels=LIMIT, draft_size=draft).frames[0]
    assert np.array_equal(np.asarray(frame), _pillow_pixels(data, draft))


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("draft", [None, 224])
def test_a_header_claiming_more_than_the_data_is_truncated(progressive: bool, draft: int | None) -> None:
    data = jpeg_claiming(9000, 9000, progressive=progressive)
    assert _pillow_pixels(data, draft).shape[:2] in ((9000, 9000), (1125, 1125))  # Pillow alone: "fine", gray
    with pytest.raises(DecodeError) as info:
        decode_image(data, max_pixels=LIMIT, draft_size=draft)
    assert info.value.reason == DecodeFailure.truncated
    assert "9000x9000" in str(info.value)


def test_trailing_data_and_multi_picture_jpegs_still_decode() -> None:
    pictures = [noise((80, 60)), Image.new("RGB", (80, 60), RED)]
    mpo = encode(pictures[0], "MPO", save_all=True, append_images=pictures[1:])
    result = decode_image(mpo, max_pixels=LIMIT)
    assert (result.format, result.n_frames) == ("MPO", 2)
    assert np.array_equal(np.asarray(result.frames[0]), _pillow_pixels(mpo, None))
    assert outcome(encode(noise(), "JPEG") + b"\xff\xd9" + bytes(100)) == OK


def test_running_out_of_memory_is_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    def greedy(img: Image.Image) -> Image.Image:
        raise MemoryError

    monkeypatch.setattr(decode_module, "to_rgb", greedy)
    with pytest.raises(DecodeError) as info:
        decoded("photo.jpg")
    assert info.value.reason == DecodeFailure.too_large and "MODERATOR_DECODE_MEMORY_MB" in str(info.value)


# --- what is kept of a frame -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "kept"),
    [
        ((100, 80), (100, 80)),  # small: as it is
        ((600, 400), (600, 400)),  # the shorter side is under twice 256: as it is
        ((1200, 800), (400, 267)),  # reduced 3 times: the shorter side stays >= 256
        ((4000, 3000), (364, 273)),  # reduced 11 times
        ((1, 100_000), (1, 2048)),  # an extreme aspect ratio: the longer side squeezed to 8 x 256
        ((30_000, 300), (2048, 300)),
    ],
)
def test_frames_kept_for_image_scorers_are_bounded(size: tuple[int, int], kept: tuple[int, int]) -> None:
    frame = frame_for_scorers(Image.new("RGB", size, (9, 99, 199)), 256)
    assert frame.size == kept
    assert frame.getpixel((0, 0)) == (9, 99, 199)


def test_decode_frames_cuts_every_sampled_frame() -> None:
    spec = CropSpec(48, 40, "short_side", short_side=48)
    request = FrameRequest(max_pixels=LIMIT, max_frames=4, crop=spec, keep_side=8)
    data = CATALOGUE["animated.gif"].build()
    result = decode_frames(data, request)
    full = decode_image(data, max_pixels=LIMIT, max_frames=4)
    assert result.crops is not None and result.crops.shape == (4, 40, 48, 3) and result.crops.dtype == np.uint8
    assert all(np.array_equal(c, crop_frame(f, spec)) for c, f in zip(result.crops, full.frames, strict=True))
    assert [f.size for f in result.frames or []] == [(8, 8)] * 4  # 16x16 reduced twice
    assert (result.n_frames, result.format) == (6, "GIF")
    bare = decode_frames(data, FrameRequest(max_pixels=LIMIT))
    assert bare.crops is None and bare.frames is None
