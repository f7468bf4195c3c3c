"""Videos (moderator.decode.video) built in code with PyAV: sampling, timestamps, and hostile files.

Frame i of a test clip is flat gray level(i), so the pixels say which frame was sampled.
"""

from __future__ import annotations

import numpy as np
import pytest

from moderator.decode import DecodeError, DecodePool, FrameRequest, decode_frames
from moderator.decode.errors import DecodeFailure
from moderator.decode.video import SAMPLE_DECODE_LIMIT, VideoLimits, sniff
from tests import videos

LIMIT = 89_478_485  # the default max_image_pixels


def decode(data: bytes, **video: float) -> object:
    return decode_frames(data, FrameRequest(max_pixels=LIMIT, keep_side=16, video=VideoLimits(**video)))  # type: ignore[arg-type]


def failure(data: bytes, **video: float) -> DecodeError:
    with pytest.raises(DecodeError) as caught:
        decode(data, **video)
    return caught.value


@pytest.mark.parametrize(
    ("kind", "codec", "name"),
    [
        ("mp4", "libx264", "MP4"),
        ("mp4", "mpeg4", "MP4"),
        ("mov", "libx264", "MOV"),
        ("webm", "libvpx", "WEBM"),
        ("webm", "libvpx-vp9", "WEBM"),
        ("mkv", "libx264", "MKV"),
    ],
)
def test_each_container_gives_the_first_frame_and_even_samples_with_timestamps(
    kind: str, codec: str, name: str
) -> None:
    data = videos.video(kind, n=100, fps=10, codec=codec)  # 10 s
    out = decode_frames(data, FrameRequest(max_pixels=LIMIT, keep_side=16, video=VideoLimits(frames=8)))
    assert out.format == name
    assert (out.width, out.height, out.n_frames) == (64, 48, 100)
    assert out.duration == pytest.approx(10.0)
    assert out.times is not None and out.frames is not None
    assert len(out.times) == len(out.frames) == 9  # the first frame, then the middles of 8 spans
    assert out.times[0] == 0.0
    expected = [0.0] + [(i + 0.5) * 10 / 8 for i in range(8)]
    for got, want in zip(out.times, expected, strict=True):
        assert want <= got < want + 0.1 + 1e-9  # the first frame at or after each target
    for t, frame in zip(out.times, out.frames, strict=True):
        gray = int(np.asarray(frame).mean())
        assert abs(gray - videos.level(round(t * 10))) <= 6, (t, gray)  # the pixels of the frame at t


def test_crops_for_the_model_come_for_every_sampled_frame() -> None:
    from moderator.decode import CropSpec

    spec = CropSpec(width=24, height=24, rule="short_side", short_side=24)
    out = decode_frames(videos.video("webm", n=40), FrameRequest(max_pixels=LIMIT, crop=spec, video=VideoLimits(3)))
    assert out.crops is not None and out.crops.shape == (4, 24, 24, 3)
    assert out.times is not None and len(out.times) == 4


def test_a_phone_video_is_turned_upright_by_its_display_rotation() -> None:
    left_white = np.zeros((48, 64, 3), np.uint8)
    left_white[:, :32] = 255
    out = decode_frames(
        videos.video("mp4", frames=[left_white] * 3, rotation=90), FrameRequest(max_pixels=LIMIT, keep_side=48)
    )
    assert (out.width, out.height) == (48, 64)
    assert out.frames is not None
    pixels = np.asarray(out.frames[0])
    assert pixels.shape[:2] == (64, 48)
    assert pixels[-1, 0].mean() > 200 and pixels[0, 0].mean() < 50  # turned a quarter counter-clockwise


def test_a_sample_far_from_its_keyframe_snaps_back_and_says_so() -> None:
    # one keyframe only: targets at frames 0, 250 and 750; 750 is past SAMPLE_DECODE_LIMIT frames from the
    # keyframe, so the keyframe stands for it (the same frame as the first: kept once)
    assert SAMPLE_DECODE_LIMIT == 600
    data = videos.video("mkv", n=1000, fps=100, size=(16, 16), gop=1000)
    out = decode_frames(data, FrameRequest(max_pixels=LIMIT, keep_side=16, video=VideoLimits(frames=2)))
    assert out.times == [0.0, 2.5]
    again = videos.video("mkv", n=1000, fps=100, size=(16, 16), gop=100)  # a keyframe every second
    assert decode_frames(again, FrameRequest(max_pixels=LIMIT, keep_side=16, video=VideoLimits(2))).times == [
        0.0,
        2.5,
        7.5,
    ]


@pytest.mark.parametrize(
    ("build", "reason", "words"),
    [
        pytest.param(lambda: videos.video("mp4", n=100)[:1200], "truncated", "truncated", id="mp4-cut-index-at-end"),
        pytest.param(
            lambda: (d := videos.video("mp4", n=100, faststart=True))[: len(d) // 2],
            "truncated",
            "ends at",
            id="mp4-faststart-cut",
        ),
        pytest.param(lambda: (d := videos.video("mkv", n=100))[: len(d) // 2], "truncated", "ends at", id="mkv-cut"),
        pytest.param(lambda: (d := videos.video("webm", n=100))[: len(d) // 2], "truncated", "ends at", id="webm-cut"),
        pytest.param(lambda: videos.corrupt_middle(videos.video("mp4", n=100)), "corrupt", "corrupt", id="mp4-corrupt"),
        pytest.param(
            lambda: videos.corrupt_middle(videos.video("webm", n=100)), "corrupt", "corrupt", id="webm-corrupt"
        ),
        pytest.param(lambda: videos.ten_hours("mp4"), "video_too_long", "header claims 36,000 s", id="mp4-10h"),
        pytest.param(lambda: videos.ten_hours("mkv"), "video_too_long", "header claims 36,000 s", id="mkv-10h"),
        pytest.param(videos.lying_duration_mkv, "video_too_long", "stream holds 36,000 s", id="mkv-says-10s-is-10h"),
        pytest.param(lambda: videos.vp9_claiming(16_000), "too_many_pixels", "16000x16000", id="vp9-16000"),
        # 30000x30000 is past FFmpeg's own size check: its decoder refuses the frame
        pytest.param(lambda: videos.vp9_claiming(30_000), "corrupt", "avcodec_send_packet", id="vp9-30000"),
        pytest.param(videos.no_streams_mp4, "no_video_stream", "no streams at all", id="zero-streams"),
        pytest.param(lambda: videos.audio_only("mp4"), "no_video_stream", "only audio", id="audio-only-mp4"),
        pytest.param(lambda: videos.audio_only("webm"), "no_video_stream", "only audio", id="audio-only-webm"),
        pytest.param(lambda: videos.video("mkv", codec="ffv1"), "unsupported_format", "ffv1", id="codec-not-allowed"),
        pytest.param(lambda: b"\x1a\x45\xdf\xa3" + bytes(200), "corrupt", "corrupt", id="ebml-garbage"),
    ],
)
def test_hostile_videos_are_refused_with_their_reason(build: object, reason: str, words: str) -> None:
    e = failure(build())  # type: ignore[operator]
    assert e.reason == DecodeFailure(reason), str(e)
    assert words in str(e)


def test_a_container_claiming_30000_pixels_a_side_is_judged_by_its_real_frames() -> None:
    out = decode(videos.mkv_claiming(30_000))
    assert (out.width, out.height) == (320, 288)  # type: ignore[attr-defined]


def test_frame_count_and_duration_limits_are_the_settings() -> None:
    data = videos.video("mkv", n=200, fps=10)  # 20 s
    assert failure(data, max_seconds=10).reason is DecodeFailure.video_too_long
    e = failure(data, max_frames=100)
    assert e.reason is DecodeFailure.too_many_frames and "101 frames" in str(e)  # counted as the packets come
    assert decode(data, max_seconds=20, max_frames=200).n_frames == 200  # type: ignore[attr-defined]


def test_images_of_the_iso_family_are_not_videos() -> None:
    assert sniff(b"\x00\x00\x00\x1cftypheic" + bytes(20)) is None
    assert sniff(b"\x00\x00\x00\x1cftypavif" + bytes(20)) is None
    assert sniff(b"\x00\x00\x00\x1cftypisom" + bytes(20)) == "mov"
    assert sniff(b"RIFF\x00\x00\x00\x00AVI LIST") is None  # AVI is not on the allow-list: never given to FFmpeg


def test_in_the_worker_pool_times_travel_back_and_a_bad_video_costs_only_itself() -> None:
    good = videos.video("webm", n=50)
    bad = [videos.ten_hours("mp4"), videos.audio_only("mp4"), videos.video("mp4", n=50)[:900]]
    request = FrameRequest(max_pixels=LIMIT, keep_side=16, video=VideoLimits(frames=4))
    with DecodePool(2, memory_mb=1024, timeout_s=20) as pool:
        out = pool.map(decode_frames, [good, *bad, good], [request] * 5)
    assert [getattr(o, "reason", "ok") for o in out] == ["ok", "video_too_long", "no_video_stream", "truncated", "ok"]
    first = out[0]
    assert not isinstance(first, DecodeError)
    assert first.times is not None and len(first.times) == 5 and first.duration == pytest.approx(5.0)
    assert first.frames is not None and len(first.frames) == 5
