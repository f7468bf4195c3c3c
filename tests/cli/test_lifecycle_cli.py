"""The lifecycle commands end to end with test-tiny (random weights: flow, files and exit codes only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from moderator.cli import eval as eval_cli
from moderator.cli import policy, probe, rescore, search
from moderator.pipeline import Pipeline
from moderator.settings import SHIPPED_POLICIES, Settings
from moderator.store import ExportFilters, Store
from tests.conftest import jpeg_bytes

# The commands as the lead wires them into `moderator` (built here so the tests do not depend on it).
app = typer.Typer()
app.add_typer(policy.app, name="policy")
app.command("rescore")(rescore.rescore)
app.command("eval")(eval_cli.eval_)
app.command("search")(search.search)
app.add_typer(probe.app, name="probe")
runner = CliRunner()
NSFW = SHIPPED_POLICIES / "nsfw.yaml"


def tiny(settings: Settings) -> list[str]:
    return ["--database-url", settings.database_url, "--model", "test-tiny", "--pretrained", "none", "--device", "cpu"]


@pytest.fixture
def scanned(tiny_settings: Settings, store: Store, photo_dir: Path) -> Store:
    Pipeline(tiny_settings, store).scan_targets([str(photo_dir)])
    return store


def test_diff_and_rescore_record_the_new_version(tmp_path: Path, tiny_settings: Settings, scanned: Store) -> None:
    edited = tmp_path / "nsfw.yaml"
    edited.write_text(NSFW.read_text().replace("threshold: 0.5", "threshold: 0.0"))  # artistic_nudity always fires
    r = runner.invoke(app, ["policy", "diff", str(NSFW), str(edited), "--json", *tiny(tiny_settings)])
    assert r.exit_code == 0, r.output
    diff = json.loads(r.output)
    assert diff["items"] == 6
    assert {c["name"]: c["fired_new"] for c in diff["classes"]}["artistic_nudity"] == 6
    r = runner.invoke(app, ["rescore", "--policy", str(edited), *tiny(tiny_settings)])
    assert r.exit_code == 0, r.output
    from moderator.policy.load import load_policy

    version = load_policy(edited).version
    rows = list(scanned.iter_export(ExportFilters()))
    assert {row.policy_versions["nsfw"] for row in rows} == {version}
    assert all("artistic_nudity" in row.tags for row in rows)
    r = runner.invoke(app, ["policy", "diff", str(NSFW), str(edited), *tiny(tiny_settings)])
    assert r.exit_code == 0 and "decisions that would change" in r.output


def test_rescore_and_diff_with_cached_prompts_never_load_the_model(
    tmp_path: Path, tiny_settings: Settings, scanned: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan cached the prompts' embeddings and logit scale: scoring stored embeddings needs
    nothing else, so the model (a gigabyte and seconds for ViT-B-32) stays unloaded."""
    import moderator.models

    def refused(settings: Settings) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(moderator.models, "load_clip", refused)
    edited = tmp_path / "nsfw.yaml"
    edited.write_text(NSFW.read_text().replace("threshold: 0.5", "threshold: 0.0"))
    r = runner.invoke(app, ["policy", "diff", str(NSFW), str(edited), "--json", *tiny(tiny_settings)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["rescore", "--policy", str(edited), *tiny(tiny_settings)])
    assert r.exit_code == 0, r.output
    assert all("artistic_nudity" in row.tags for row in scanned.iter_export(ExportFilters()))


def test_search_by_text_and_by_image(tiny_settings: Settings, scanned: Store, photo_dir: Path) -> None:
    r = runner.invoke(app, ["search", "a red car", "--json", "-k", "3", *tiny(tiny_settings)])
    assert r.exit_code == 0, r.output
    assert len([json.loads(line) for line in r.output.splitlines() if line.startswith("{")]) == 3
    r = runner.invoke(app, ["search", "--image", str(photo_dir / "p2.jpg"), "--json", *tiny(tiny_settings)])
    assert r.exit_code == 0, r.output
    first = json.loads(next(line for line in r.output.splitlines() if line.startswith("{")))
    assert first["uris"][0].endswith("p2.jpg") and first["score"] == pytest.approx(1.0, abs=1e-3)  # its own embedding
    assert runner.invoke(app, ["search", *tiny(tiny_settings)]).exit_code == 2


def dataset(root: Path) -> Path:
    for label, seeds in {"neutral": range(0, 4), "explicit": range(10, 14)}.items():
        (root / label).mkdir(parents=True)
        for s in seeds:
            (root / label / f"{s}.jpg").write_bytes(jpeg_bytes(s))
    return root


def test_eval_writes_report_and_curves(tmp_path: Path, tiny_settings: Settings) -> None:
    data = dataset(tmp_path / "data")
    variants = tmp_path / "variants.yaml"
    variants.write_text('variants:\n  bare: {templates: ["{}"]}\n')
    out = tmp_path / "report"
    r = runner.invoke(
        app,
        [
            "eval",
            str(data),
            "--policy",
            str(NSFW),
            "--compare-prompts",
            str(variants),
            "--out",
            str(out),
            *tiny(tiny_settings),
        ],
    )
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert report["images"] == 8 and report["report"]["items"] == 8
    assert sum(map(sum, report["report"]["confusion"])) == 8
    assert set(report["variants"]) == {"bare"}
    assert (out / "pr_curves.png").read_bytes()[:4] == b"\x89PNG" and (out / "pr_curves_bare.png").exists()
    assert "confusion matrix" in r.output
    r = runner.invoke(app, ["eval", str(data), "--policy", str(SHIPPED_POLICIES / "tags.yaml"), *tiny(tiny_settings)])
    assert r.exit_code == 2 and "not classes of policy" in r.output


def test_probe_train_then_policy_test(tmp_path: Path, tiny_settings: Settings) -> None:
    data = dataset(tmp_path / "data")
    r = runner.invoke(
        app, ["probe", "train", "--data", str(data), "--out", str(tmp_path / "p" / "probe"), *tiny(tiny_settings)]
    )
    assert r.exit_code == 0, r.output
    card = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert card["model_id"] == "test-tiny/none" and card["classes"] == ["explicit", "neutral"]
    assert (card["n_train"], card["n_test"]) == (6, 2)
    policy_file = tmp_path / "p" / "probe_policy.yaml"
    policy_file.write_text(
        "name: learned\nscorer: linear_probe\noptions: {probe: probe.safetensors}\n"
        "classes:\n  neutral: {}\n  explicit: {threshold: 0.5, action: review}\n"
    )
    r = runner.invoke(
        app, ["policy", "test", str(policy_file), str(data / "explicit" / "10.jpg"), "--json", *tiny(tiny_settings)[2:]]
    )
    assert r.exit_code == 0, r.output
    (scored,) = json.loads(r.output[r.output.index("\n[") :])  # after the random-weights warning
    assert set(scored["scores"]) == {"neutral", "explicit"}
    r = runner.invoke(
        app,
        [
            "policy",
            "test",
            str(policy_file),
            str(tmp_path / "missing.jpg"),
            "--model",
            "test-tiny",
            "--pretrained",
            "none",
        ],
    )
    assert r.exit_code == 1 and "cannot read" in r.output


def test_probe_for_another_model_is_refused_by_policy_test(tmp_path: Path, tiny_settings: Settings) -> None:
    data = dataset(tmp_path / "data")
    runner.invoke(app, ["probe", "train", "--data", str(data), "--out", str(tmp_path / "probe"), *tiny(tiny_settings)])
    policy_file = tmp_path / "learned.yaml"
    policy_file.write_text(
        "name: learned\nscorer: linear_probe\noptions: {probe: probe.json}\nclasses:\n  neutral: {}\n  explicit: {}\n"
    )
    r = runner.invoke(
        app,
        [
            "policy",
            "test",
            str(policy_file),
            str(data / "neutral" / "0.jpg"),
            "--model",
            "ViT-B-32",
            "--pretrained",
            "none",
        ],
    )
    assert r.exit_code == 2 and "trained on embeddings of test-tiny/none" in r.output


# No CLIP weights here: a checkpoint path that does not exist (loading CLIP would fail in one line).
NO_CLIP = ["--model", "ViT-B-32", "--pretrained", "/nonexistent/open_clip_model.safetensors", "--device", "cpu"]
OPENNSFW = SHIPPED_POLICIES / "opennsfw.yaml"


def benign_photos(folder: Path, names: tuple[str, ...] = ("astronaut", "coffee", "chelsea")) -> list[Path]:
    import io

    from PIL import Image
    from skimage import data as skdata

    folder.mkdir(parents=True)
    paths = []
    for name in names:
        buf = io.BytesIO()
        Image.fromarray(getattr(skdata, name)()).convert("RGB").save(buf, "JPEG", quality=90)
        (path := folder / f"{name}.jpg").write_bytes(buf.getvalue())
        paths.append(path)
    return paths


def test_policy_test_with_open_nsfw_needs_no_clip_weights(tmp_path: Path) -> None:
    (photo,) = benign_photos(tmp_path / "photos", ("coffee",))
    r = runner.invoke(app, ["policy", "test", str(OPENNSFW), str(photo), "--json", *NO_CLIP])
    assert r.exit_code == 0, r.output
    (scored,) = json.loads(r.output)
    assert scored["action"] == "allow" and scored["scores"]["nsfw"] < 0.4  # a benign photo


def test_eval_with_open_nsfw_takes_nsfw_and_sfw_labels_and_needs_no_clip_weights(tmp_path: Path) -> None:
    data = tmp_path / "data"
    benign_photos(data / "sfw")
    benign_photos(data / "nsfw", ("rocket",))  # mislabelled on purpose: both classes have support
    db = tmp_path / "store.db"
    out = tmp_path / "report"
    args = ["eval", str(data), "--policy", str(OPENNSFW), "--out", str(out), "--database-url", f"sqlite:///{db}"]
    r = runner.invoke(app, [*args, *NO_CLIP])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())["report"]
    assert report["classes"] == ["nsfw", "sfw"] and report["items"] == 4
    assert report["confusion"][1] == [0, 3]  # open_nsfw calls every benign photo sfw
    assert not db.exists()  # nothing to store without CLIP embeddings
    (data / "cat").mkdir()
    (data / "cat" / "c.jpg").write_bytes((data / "sfw" / "coffee.jpg").read_bytes())
    r = runner.invoke(app, [*args, *NO_CLIP])
    assert r.exit_code == 2 and "not classes of policy" in r.output
