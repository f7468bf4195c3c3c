"""The hashlist scorer: exact sha256 matches on bytes, perceptual matches on decoded frames."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from skimage import data as skdata

from moderator.decode import decode_image
from moderator.hashlists import add_images, phash_hex
from moderator.policy.schema import PolicySpec
from moderator.scorers import ScorerContext, ScorerInput, ScoringBatch
from moderator.scorers.hashlist import scorer
from moderator.settings import Settings

SETTINGS = Settings()


def _encode(img: Image.Image, fmt: str = "PNG", **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _sample(name: str) -> Image.Image:
    return Image.fromarray(getattr(skdata, name)()).convert("RGB")


def _spec(match: str, lists: list[str], **options: Any) -> PolicySpec:
    return PolicySpec.model_validate(
        {
            "name": "known_bad",
            "mode": "multilabel",
            "scorer": "hashlist",
            "options": {"lists": lists, "match": match, **options},
            "classes": {"known_bad": {"threshold": 1.0, "action": "block"}},
        }
    )


def _ctx(policy_dir: Path) -> ScorerContext:
    def no_clip() -> Any:
        raise AssertionError("hash lists never need CLIP")

    return ScorerContext(settings=SETTINGS, clip=no_clip, policy_file=policy_dir / "known_bad.yaml")


def _frames(data: bytes) -> list[Image.Image]:
    return decode_image(data, max_pixels=SETTINGS.max_image_pixels).frames


@pytest.fixture
def listed(tmp_path: Path) -> tuple[Path, bytes]:
    """A policy folder whose lists/bad.txt holds the astronaut photo (as PNG), after an unrelated entry."""
    original = _encode(_sample("astronaut"))
    image = tmp_path / "astronaut.png"
    image.write_bytes(original)
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "bad.txt").write_text("# team list\nsha256:" + "0" * 64 + "  # other\n")
    add_images(tmp_path / "lists" / "bad.txt", [image], SETTINGS, label="case 12")
    return tmp_path, original


def test_exact_match_scores_one_from_bytes_alone_and_names_list_and_entry(listed: tuple[Path, bytes]) -> None:
    folder, original = listed
    compiled = scorer.compile(_spec("exact", ["lists/bad.txt"]), _ctx(folder))
    other = _encode(_sample("coffee"))
    shas = [hashlib.sha256(b).hexdigest() for b in (original, other)]

    assert compiled.input is ScorerInput.BYTES
    out = compiled.score(ScoringBatch(sha256=shas, data=[original, other]))  # no frames: nothing decoded

    assert out.scores.tolist() == [[1.0], [0.0]]
    assert out.evidence[0][0] == f"lists/bad.txt:3 sha256:{shas[0]} (case 12)"
    assert out.evidence[1] == [""]


def test_exact_does_not_match_a_re_encoded_copy(listed: tuple[Path, bytes]) -> None:
    folder, _ = listed
    copy = _encode(_sample("astronaut"), "JPEG", quality=70)
    compiled = scorer.compile(_spec("exact", ["lists/bad.txt"]), _ctx(folder))
    out = compiled.score(ScoringBatch(sha256=[hashlib.sha256(copy).hexdigest()], data=[copy]))
    assert out.scores.tolist() == [[0.0]]


def test_perceptual_matches_a_reencoded_resized_copy_and_not_unrelated_images(listed: tuple[Path, bytes]) -> None:
    folder, _ = listed
    astronaut = _sample("astronaut")
    half = astronaut.resize((astronaut.width // 2, astronaut.height // 2), Image.Resampling.BILINEAR)
    copy = _encode(half, "JPEG", quality=70)
    unrelated = [_encode(_sample(n), "JPEG", quality=90) for n in ("coffee", "chelsea", "camera", "rocket")]
    items = [copy, *unrelated]
    compiled = scorer.compile(_spec("perceptual", ["lists/bad.txt"], max_distance=8), _ctx(folder))

    assert compiled.input is ScorerInput.IMAGE
    batch = ScoringBatch(sha256=[hashlib.sha256(b).hexdigest() for b in items], frames=[_frames(b) for b in items])
    out = compiled.score(batch)

    assert out.scores[:, 0].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert out.evidence[0][0].startswith("lists/bad.txt:4 phash:")
    assert "(case 12) at distance" in out.evidence[0][0]


def test_perceptual_distance_is_the_limit(listed: tuple[Path, bytes]) -> None:
    folder, _ = listed
    listed_hash = int(phash_hex(_frames(listed[1])[0]), 16)
    # an image whose phash differs in exactly d bits cannot be drawn, so test the limit on the list side
    for d, expected in ((3, 1.0), (4, 0.0)):
        flipped = listed_hash ^ ((1 << d) - 1)
        (folder / "lists" / f"near{d}.txt").write_text(f"phash:{flipped:016x}\n")
        compiled = scorer.compile(_spec("perceptual", [f"lists/near{d}.txt"], max_distance=3), _ctx(folder))
        out = compiled.score(ScoringBatch(sha256=["x"], frames=[_frames(listed[1])]))
        assert out.scores[0, 0] == expected, d


def test_phash_is_computed_once_per_batch_for_every_perceptual_policy(listed: tuple[Path, bytes]) -> None:
    folder, original = listed
    a = scorer.compile(_spec("perceptual", ["lists/bad.txt"]), _ctx(folder))
    b = scorer.compile(_spec("perceptual", ["lists/bad.txt"], max_distance=0), _ctx(folder))
    batch = ScoringBatch(sha256=["x"], frames=[_frames(original)])
    assert a.score(batch).scores[0, 0] == 1.0
    batch._memo["phash"] = ["0" * 16]  # b must read the batch's hashes, not hash the frame again
    assert b.score(batch).scores[0, 0] == 0.0


def test_model_id_follows_list_content(listed: tuple[Path, bytes]) -> None:
    folder, _ = listed
    before = scorer.compile(_spec("exact", ["lists/bad.txt"]), _ctx(folder)).model_id
    with (folder / "lists" / "bad.txt").open("a") as f:
        f.write("sha256:" + "1" * 64 + "\n")
    after = scorer.compile(_spec("exact", ["lists/bad.txt"]), _ctx(folder)).model_id
    assert before != after and before.startswith("hashlist:sha256:")


@pytest.mark.parametrize(
    ("options", "classes", "message"),
    [
        ({"lists": ["lists/bad.txt"], "max_distnace": 3}, 1, "max_distnace"),
        ({"lists": []}, 1, "lists"),
        ({"lists": ["lists/missing.txt"]}, 1, "cannot read hash list"),
        ({"lists": ["lists/bad.txt"]}, 2, "exactly one class"),
    ],
)
def test_bad_policies_are_refused(
    listed: tuple[Path, bytes], options: dict[str, Any], classes: int, message: str
) -> None:
    spec = PolicySpec.model_validate(
        {
            "name": "known_bad",
            "mode": "multilabel",
            "scorer": "hashlist",
            "options": options,
            "classes": {f"c{i}": {"threshold": 1.0, "action": "block"} for i in range(classes)},
        }
    )
    with pytest.raises(ValueError, match=message):
        scorer.compile(spec, _ctx(listed[0]))


def test_malformed_list_is_refused_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("sha256:" + "a" * 64 + "\nphash:xyz\n")
    with pytest.raises(ValueError, match=r"l.txt:2"):
        scorer.compile(_spec("exact", ["l.txt"]), _ctx(tmp_path))


def test_shipped_list_and_policies_compile() -> None:
    from moderator.engine.compile import CompiledPolicy, compile_policy
    from moderator.policy.load import load_policy
    from moderator.settings import SHIPPED_POLICIES

    for name, kind in (("known_bad", ScorerInput.BYTES), ("known_bad_similar", ScorerInput.IMAGE)):
        loaded = load_policy(SHIPPED_POLICIES / f"{name}.yaml")
        compiled = compile_policy(loaded, _ctx(SHIPPED_POLICIES))
        assert isinstance(compiled, CompiledPolicy) and compiled.scorer.input is kind


def test_scan_blocks_a_listed_file_without_decoding_it(tmp_path: Path) -> None:
    from moderator.pipeline import Pipeline
    from moderator.policy.load import load_policies
    from moderator.settings import SHIPPED_POLICIES
    from moderator.store import Store

    garbage = b"listed bytes that no decoder accepts"
    images = tmp_path / "images"
    images.mkdir()
    (images / "listed.jpg").write_bytes(garbage)
    (images / "photo.jpg").write_bytes(_encode(_sample("coffee"), "JPEG"))
    policies = tmp_path / "policies"
    (policies / "lists").mkdir(parents=True)
    for name in ("known_bad.yaml", "known_bad_similar.yaml"):
        (policies / name).write_text((SHIPPED_POLICIES / name).read_text())
    (policies / "lists" / "known_bad.txt").write_text(f"sha256:{hashlib.sha256(garbage).hexdigest()}  # case 1\n")
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'store.db'}", policies=[policies])

    pipeline = Pipeline(settings, Store(settings.database_url), load_policies([policies]))
    summary = pipeline.scan_targets([str(images)])

    # decoding the listed file would have recorded a decode error: it was blocked on its bytes alone
    assert (summary.errors, dict(summary.decisions)) == (0, {"block": 1, "allow": 1})


def _listed_scan(tmp_path: Path, policy_files: list[Path], entries: str = "") -> tuple[Settings, Path, Path]:
    """(settings, images folder, list file): a folder of the given policies whose hash list holds `entries`."""
    policies = tmp_path / "policies"
    (policies / "lists").mkdir(parents=True)
    for policy in policy_files:
        (policies / policy.name).write_text(policy.read_text())
    list_file = policies / "lists" / "known_bad.txt"
    list_file.write_text(entries)
    images = tmp_path / "images"
    images.mkdir()
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'store.db'}",
        policies=[policies],
        hash_lists_dir=tmp_path / "my-lists",
        model="test-tiny",
        pretrained="none",
        device="cpu",
    )
    return settings, images, list_file


def test_a_blocked_known_bad_file_is_unchanged_on_rescan_until_its_list_changes(tmp_path: Path) -> None:
    import os

    from moderator.pipeline import Pipeline
    from moderator.settings import SHIPPED_POLICIES
    from moderator.store import Store

    garbage = b"listed bytes that no decoder accepts"
    shipped = [SHIPPED_POLICIES / n for n in ("known_bad.yaml", "nsfw.yaml", "tags.yaml")]
    settings, images, list_file = _listed_scan(tmp_path, shipped, f"sha256:{hashlib.sha256(garbage).hexdigest()}\n")
    (images / "listed.jpg").write_bytes(garbage)
    (images / "photo.jpg").write_bytes(_encode(_sample("coffee"), "JPEG"))
    store = Store(settings.database_url)

    first = Pipeline(settings, store).scan_targets([str(images)])
    assert first.scanned == 2 and first.decisions["block"] == 1
    # the CLIP policies never ran on the blocked file, and need not: nothing changed
    again = Pipeline(settings, store).scan_targets([str(images)])
    assert (again.scanned, again.unchanged) == (0, 2)
    os.utime(images / "listed.jpg", ns=(7, 7))  # touched, same bytes
    assert Pipeline(settings, store).scan_targets([str(images)]).unchanged == 2
    # the list's content is part of its scorer's model id: a new entry makes every known_bad result stale
    list_file.write_text(list_file.read_text() + "sha256:" + "1" * 64 + "\n")
    changed = Pipeline(settings, store).scan_targets([str(images)])
    assert (changed.scanned, changed.unchanged, changed.decisions["block"]) == (2, 0, 1)
    assert Pipeline(settings, store).scan_targets([str(images)]).unchanged == 2
    store.close()


def test_a_long_lived_pipeline_matches_against_the_list_as_it_is_now(tmp_path: Path) -> None:
    from moderator.pipeline import Pipeline
    from moderator.settings import SHIPPED_POLICIES
    from moderator.store import ExportFilters, Store

    settings, images, list_file = _listed_scan(tmp_path, [SHIPPED_POLICIES / "known_bad_similar.yaml"])
    original = tmp_path / "astronaut.png"
    original.write_bytes(_encode(_sample("astronaut")))
    (images / "copy.jpg").write_bytes(_encode(_sample("astronaut").resize((384, 384)), "JPEG", quality=70))
    (images / "other.png").write_bytes(_encode(_sample("coffee")))
    store = Store(settings.database_url)
    pipeline = Pipeline(settings, store)  # kept across scans, as a worker or the API keeps it

    first = pipeline.scan_targets([str(images)])
    assert dict(first.decisions) == {"allow": 2}  # against an empty list
    add_images(list_file, [original], settings)
    again = pipeline.scan_targets([str(images)])
    assert (again.scanned, dict(again.decisions)) == (2, {"review": 1, "allow": 1})
    rows = {Path(r.uri).name: r for r in store.iter_export(ExportFilters())}
    assert rows["copy.jpg"].decision == "review" and rows["other.png"].decision == "allow"
    assert pipeline.scan_targets([str(images)]).unchanged == 2
    store.close()
