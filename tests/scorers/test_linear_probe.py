"""The linear_probe scorer: loaded through its entry point like a third-party plugin, known weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from moderator import plugins
from moderator.engine.compile import CompiledPolicy, compile_policy
from moderator.policy.load import PolicyError, load_policy
from moderator.scorers import ScorerContext, ScoringBatch
from moderator.scorers.linear_probe import LinearProbeScorer, save_probe
from tests.lifecycle import MODEL_ID, TINY, axis, write

POLICY = """
name: pets
mode: exclusive
scorer: linear_probe
options: {probe: probes/pets.safetensors}
classes:
  dog: {threshold: 0.9, action: review}
  cat: {threshold: 0.9, action: tag}
"""


def make_probe(
    folder: Path, *, model_id: str = MODEL_ID, activation: str = "softmax", trained: list[bool] | None = None
) -> Path:
    # Probe classes in another order than the policy's: cat reads axis 0, dog axis 1, logits x10.
    weight = np.stack([axis(0), axis(1)]) * 10.0
    card = {
        "model_id": model_id,
        "classes": ["cat", "dog"],
        "activation": activation,
        "trained": trained or [True, True],
        "dim": 8,
        "data_hash": "x",
    }
    weights, _ = save_probe(folder / "probes" / "pets", weight, np.zeros(2), card)
    return weights


def compile_file(path: Path) -> CompiledPolicy:
    result = compile_policy(load_policy(path), ScorerContext(settings=TINY, clip=lambda: None))  # type: ignore[arg-type,return-value]
    assert isinstance(result, CompiledPolicy), result
    return result


def test_registered_through_its_entry_point() -> None:
    assert isinstance(plugins.get("moderator.scorers", "linear_probe"), LinearProbeScorer)


def test_scores_with_known_weights_in_policy_order(tmp_path: Path) -> None:
    make_probe(tmp_path)
    policy = compile_file(write(tmp_path / "pets.yaml", POLICY))
    results = policy.evaluate(ScoringBatch(sha256=["a", "b"], embeddings=[axis(0)[None], np.stack([axis(0), axis(1)])]))
    e = np.exp(10.0)
    assert results[0].scores == pytest.approx({"dog": 1 / (1 + e), "cat": e / (1 + e)})
    assert [f.name for f in results[0].fired] == ["cat"]
    assert results[1].scores["dog"] == pytest.approx(e / (1 + e))  # the worst frame per class
    assert results[0].model_id.startswith(MODEL_ID + "+probe:")


def test_probe_of_another_model_is_refused_with_a_located_error(tmp_path: Path) -> None:
    make_probe(tmp_path, model_id="ViT-L-14/openai")
    with pytest.raises(PolicyError) as err:
        compile_file(write(tmp_path / "pets.yaml", POLICY))
    assert err.value.line == 4 and err.value.field == "options"
    assert "trained on embeddings of ViT-L-14/openai" in str(err.value) and MODEL_ID in str(err.value)


def test_class_mismatch_missing_file_and_tampered_weights(tmp_path: Path) -> None:
    policy_file = write(tmp_path / "pets.yaml", POLICY)
    with pytest.raises(PolicyError, match="not found"):
        compile_file(policy_file)
    weights = make_probe(tmp_path)
    with pytest.raises(PolicyError, match="must be the same"):
        compile_file(write(tmp_path / "birds.yaml", POLICY.replace("cat:", "bird:")))
    weights.write_bytes(weights.read_bytes()[:-4] + b"\x01\x02\x03\x04")
    with pytest.raises(PolicyError, match="does not match its card"):
        compile_file(policy_file)


def test_untrained_class_scores_zero_in_sigmoid_mode(tmp_path: Path) -> None:
    make_probe(tmp_path, activation="sigmoid", trained=[True, False])
    policy = compile_file(write(tmp_path / "pets.yaml", POLICY.replace("exclusive", "multilabel")))
    (result,) = policy.evaluate(ScoringBatch(sha256=["a"], embeddings=[axis(1)[None]]))
    assert result.scores["dog"] == 0.0
    assert result.scores["cat"] == pytest.approx(0.5)  # sigmoid(0): orthogonal to the cat direction


def test_card_is_json_with_model_and_hash(tmp_path: Path) -> None:
    make_probe(tmp_path)
    card = json.loads((tmp_path / "probes" / "pets.json").read_text())
    assert card["model_id"] == MODEL_ID and len(card["weights_sha256"]) == 64
