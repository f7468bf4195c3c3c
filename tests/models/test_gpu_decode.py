"""JPEGs decoded and cropped on the model's device, checked against the CPU path.

Every test runs with torchvision's CPU decoder standing in for the device (the same code
path, libjpeg instead of nvJPEG), and again on CUDA where a GPU is present (marked gpu).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from moderator.decode import CropSpec, DecodeError, decode_image
from moderator.models.clip import get_clip_model
from moderator.models.gpu_decode import DeviceJpegDecoder, device_header, upright
from moderator.settings import Settings
from tests.hostile import CATALOGUE, OK

LIMIT = 10**8


def _cuda() -> str:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return "cuda"


DEVICES = pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])


def device_for(name: str) -> str:
    return _cuda() if name == "cuda" else name


def clip_model():  # type: ignore[no-untyped-def]
    return get_clip_model(Settings(model="test-tiny", pretrained="none", device="cpu", backend="torch"))


def photo(seed: int, size: tuple[int, int], **params: object) -> bytes:
    """A smooth scene under sensor-like noise, saved as a camera would (quality 90 unless told)."""
    rng = np.random.default_rng(seed)
    scene = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
    noisy = np.clip(np.asarray(scene, dtype=np.int16) + rng.integers(-8, 9, (size[1], size[0], 1)), 0, 255)
    img = Image.fromarray(noisy.astype(np.uint8))
    mode = params.pop("mode", "RGB")
    buf = io.BytesIO()
    img.convert(str(mode)).save(buf, "JPEG", **({"quality": 90} | params))
    return buf.getvalue()


def oriented(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return photo(orientation, (400, 240), exif=exif)


REAL_JPEGS = [
    photo(0, (640, 480)),
    photo(1, (480, 640)),
    photo(2, (4000, 3000)),  # 12 MP
    photo(3, (1000, 300)),
    photo(4, (224, 224)),
    photo(5, (100, 90)),  # smaller than the model input: upscaled
    photo(6, (20000, 20)),  # extreme aspect: cropped in source pixels first
    photo(7, (800, 600), progressive=True),
    photo(8, (600, 800), mode="L"),
    *[oriented(o) for o in range(1, 9)],
]


@DEVICES
def test_device_crops_match_the_cpu_path(device: str) -> None:
    model = clip_model()
    decoder = DeviceJpegDecoder(model.crop, device_for(device), max_pixels=LIMIT, max_bytes=LIMIT)
    results = decoder.decode(REAL_JPEGS)
    assert all(r is not None for r in results)  # every one of them is the device's to decode
    for data, result in zip(REAL_JPEGS, results, strict=True):
        assert result is not None
        decoded = decode_image(data, max_pixels=LIMIT, draft_size=model.image_size)
        cpu = model.preprocess_batch(decoded.frames)
        assert (result.width, result.height) == (decoded.width, decoded.height)
        assert result.pixels.shape == cpu.shape and result.pixels.dtype == torch.uint8
        diff = (result.pixels.cpu().int() - cpu.int()).abs()
        assert float(diff.float().mean()) <= 1.5 and int(diff.max()) <= 16  # grey levels
        a, b = model.encode_images(result.pixels.cpu()), model.encode_images(cpu)
        assert float((a * b).sum()) >= 0.9999


def test_upright_turns_as_pillow_does() -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    for orientation in range(1, 9):
        stored = Image.fromarray(array)
        stored.getexif()[0x0112] = orientation
        expected = ImageOps.exif_transpose(stored)
        got = upright(torch.from_numpy(array).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
        assert np.array_equal(got, np.asarray(expected)), orientation


# The one hostile kind the device path does not refuse: a sequential scan cut short behind an end marker.
PADDED_ON_DEVICE = {"80x80-header-64x64-data.jpg", "cut-with-end-marker.jpg"}


def _hostile_cases() -> list[object]:
    cases = []
    for name in CATALOGUE:
        for device in ("cpu", "cuda"):
            marks = [pytest.mark.gpu] if device == "cuda" else []
            if name in PADDED_ON_DEVICE:
                marks.append(pytest.mark.xfail(strict=device == "cpu", reason="libjpeg pads it, warning only"))
            cases.append(pytest.param(name, device, marks=marks, id=f"{name}-{device}"))
    return cases


@pytest.mark.parametrize(("name", "device"), _hostile_cases())
def test_hostile_files_still_get_their_reason(name: str, device: str) -> None:
    """Decoded on the device, or handed back to the CPU path, every file ends as the CPU path says."""
    case = CATALOGUE[name]
    data = case.build()
    decoder = DeviceJpegDecoder(clip_model().crop, device_for(device), max_pixels=89_478_485, max_bytes=LIMIT)
    [result] = decoder.decode([data])
    if result is not None:
        outcome = OK
    else:
        try:
            decode_image(data, max_pixels=89_478_485, draft_size=224)
            outcome = OK
        except DecodeError as exc:
            outcome = exc.reason
    assert outcome == case.expected


@DEVICES
def test_a_file_the_decoder_refuses_goes_back_alone(device: str) -> None:
    good = photo(0, (96, 64))
    broken = bytearray(good)
    sof = broken.index(b"\xff\xc0")
    broken[sof + 11] = 3  # the first component names quantisation table 3, never defined
    batch = [good, bytes(broken), good]
    results = DeviceJpegDecoder(clip_model().crop, device_for(device), max_pixels=LIMIT, max_bytes=LIMIT).decode(batch)
    assert results[0] is not None and results[2] is not None and results[1] is None
    with pytest.raises(DecodeError) as err:
        decode_image(bytes(broken), max_pixels=LIMIT)
    assert err.value.reason == "corrupt"


def test_limits_are_read_from_the_header_before_any_decode() -> None:
    data = photo(0, (640, 480))
    assert device_header(data, max_pixels=LIMIT, max_bytes=LIMIT) is not None
    assert device_header(data, max_pixels=640 * 480 - 1, max_bytes=LIMIT) is None
    assert device_header(data, max_pixels=LIMIT, max_bytes=len(data) - 1) is None
    with pytest.raises(DecodeError) as err:  # where it goes instead: refused from its header
        decode_image(data, max_pixels=640 * 480 - 1)
    assert err.value.reason == "too_many_pixels"
    arithmetic = bytearray(data)
    arithmetic[arithmetic.index(b"\xff\xc0") + 1] = 0xC9  # arithmetic-coded frame: not for nvJPEG
    assert device_header(bytes(arithmetic), max_pixels=LIMIT, max_bytes=LIMIT) is None
    assert device_header(photo(0, (64, 64), mode="CMYK"), max_pixels=LIMIT, max_bytes=LIMIT) is None
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    assert device_header(png.getvalue(), max_pixels=LIMIT, max_bytes=LIMIT) is None


@DEVICES
def test_frames_for_image_scorers_are_small_and_upright(device: str) -> None:
    decoder = DeviceJpegDecoder(
        clip_model().crop, device_for(device), max_pixels=LIMIT, max_bytes=LIMIT, frame_size=256
    )
    [big, turned] = decoder.decode([photo(0, (4000, 3000)), oriented(6)])
    assert big is not None and big.frame is not None and min(big.frame.size) == 256
    assert turned is not None and turned.frame is not None and turned.frame.size == (240, 400)
    assert (turned.width, turned.height) == (240, 400)


def test_filters_the_device_cannot_reproduce_are_refused() -> None:
    spec = CropSpec(width=224, height=224, rule="short_side", short_side=224, resample=Image.Resampling.LANCZOS)
    with pytest.raises(ValueError, match="resampling filter"):
        DeviceJpegDecoder(spec, "cpu", max_pixels=LIMIT, max_bytes=LIMIT)


@pytest.mark.gpu
def test_a_cuda_scan_decodes_jpegs_on_the_device_and_records_hostile_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The scan on CUDA: same outcomes as on CPU for every catalogue file, embeddings close for real JPEGs."""
    _cuda()
    from moderator.pipeline import Pipeline
    from moderator.settings import SHIPPED_POLICIES
    from moderator.store import Store

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, data in enumerate(REAL_JPEGS):
        (folder / f"real-{i}.jpg").write_bytes(data)
    for name, case in CATALOGUE.items():
        if name not in PADDED_ON_DEVICE:
            (folder / name).write_bytes(case.build())
    outcomes, embeddings = {}, {}
    shas = [hashlib.sha256(data).hexdigest() for data in REAL_JPEGS]
    for device in ("cpu", "cuda"):
        settings = Settings(
            model="test-tiny",
            pretrained="none",
            device=device,
            database_url=f"sqlite:///{tmp_path / f'{device}.db'}",
            policies=[SHIPPED_POLICIES / "tags.yaml"],
        )
        store = Store(settings.database_url)
        try:
            Pipeline(settings, store).scan_targets([str(folder)])
            outcomes[device] = {Path(r.uri).name: (r.status, r.error) for r in store.iter_export()}
            embeddings[device] = store.load_embeddings(shas, "test-tiny/none")
        finally:
            store.close()
    assert outcomes["cuda"] == outcomes["cpu"]
    for sha in shas:
        a, b = (embeddings[d][sha].astype(np.float32).reshape(-1) for d in ("cpu", "cuda"))
        assert float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) > 0.99  # fp16 on CUDA, fp32 on CPU
