"""The hashlist scorer: exact md5/sha256 matches on bytes, PDQ/pHash matches on every decoded frame."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from moderator.decode import decode_image
from moderator.hashlists import HashKind, add_images, pdq_of, phash_hex
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


def _spec(match: str, lists: list[Any], classes: tuple[str, ...] = ("known_bad",), **options: Any) -> PolicySpec:
    return PolicySpec.model_validate(
        {
            "name": "known_bad",
            "mode": "multilabel",
            "scorer": "hashlist",
            "options": {"lists": lists, "match": match, **options},
            "classes": {c: {"threshold": 1.0, "action": "block" if i == 0 else "tag"} for i, c in enumerate(classes)},
        }
    )


def _ctx(policy_dir: Path, settings: Settings = SETTINGS) -> ScorerContext:
    def no_clip() -> Any:
        raise AssertionError("hash lists never need CLIP")

    return ScorerContext(settings=settings, clip=no_clip, policy_file=policy_dir / "known_bad.yaml")


def _frames(data: bytes) -> list[Image.Image]:
    return decode_image(data, max_pixels=SETTINGS.max_image_pixels).frames


def _batch(items: list[bytes]) -> ScoringBatch:
    return ScoringBatch(sha256=[hashlib.sha256(b).hexdigest() for b in items], frames=[_frames(b) for b in items])


@pytest.fixture
def listed(tmp_path: Path) -> tuple[Path, bytes]:
    """A policy folder whose lists/bad.txt holds the astronaut photo (as PNG), after an unrelated entry:
    line 3 its sha256, line 4 its pdq."""
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


def test_md5_lines_match_exactly_on_the_bytes_with_their_provenance(tmp_path: Path) -> None:
    data = b"any bytes at all, an image or not"
    md5 = hashlib.md5(data).hexdigest()
    (tmp_path / "l.txt").write_text(f'pdq {"0" * 64}\nmd5 {md5.upper()} source="ncmec:Industry" tags=A1,B2  # case 9\n')
    compiled = scorer.compile(_spec("exact", ["l.txt"]), _ctx(tmp_path))
    out = compiled.score(ScoringBatch(sha256=["f" * 64, "e" * 64], data=[data, data + b"!"]))
    assert out.scores.tolist() == [[1.0], [0.0]]
    assert out.evidence[0][0] == f"l.txt:2 md5:{md5} (case 9) source=ncmec:Industry tags=A1,B2"


def test_exact_does_not_match_a_re_encoded_copy(listed: tuple[Path, bytes]) -> None:
    folder, _ = listed
    copy = _encode(_sample("astronaut"), "JPEG", quality=70)
    compiled = scorer.compile(_spec("exact", ["lists/bad.txt"]), _ctx(folder))
    out = compiled.score(ScoringBatch(sha256=[hashlib.sha256(copy).hexdigest()], data=[copy]))
    assert out.scores.tolist() == [[0.0]]


def _near_copies() -> list[bytes]:
    astronaut = _sample("astronaut")
    half = astronaut.resize((astronaut.width // 2, astronaut.height // 2), Image.Resampling.BILINEAR)
    return [_encode(half, "JPEG", quality=70), _encode(astronaut.resize((384, 384)), "WEBP", quality=60)]


def test_pdq_matches_resized_recompressed_copies_within_31_and_not_unrelated_images(listed: tuple[Path, bytes]) -> None:
    folder, _ = listed
    unrelated = [_encode(_sample(n), "JPEG", quality=90) for n in ("coffee", "chelsea", "camera", "rocket", "horse")]
    items = [*_near_copies(), *unrelated]
    compiled = scorer.compile(_spec("perceptual", ["lists/bad.txt"]), _ctx(folder))

    assert compiled.input is ScorerInput.IMAGE
    assert "pdq<=31" in compiled.model_id
    out = compiled.score(_batch(items))

    assert out.scores[:, 0].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    evidence = out.evidence[0][0]
    assert evidence.startswith("lists/bad.txt:4 pdq:") and "(case 12) at distance " in evidence
    distance = int(evidence.split("at distance ")[1].split()[0])
    assert 0 < distance <= 31 and evidence.endswith(f"at distance {distance} (<= 31)")


def test_pdq_distance_is_the_limit_per_policy_and_per_list(listed: tuple[Path, bytes]) -> None:
    folder, original = listed
    listed_pdq = int(pdq_of(_frames(original)[0]).hex, 16)
    for d in (20, 21):
        (folder / "lists" / f"near{d}.txt").write_text(f"pdq {listed_pdq ^ ((1 << d) - 1):064x}\n")
    batch = _batch([original])
    for lists, options, expected in (
        (["lists/near20.txt"], {"max_distance": {"pdq": 20}}, 1.0),
        (["lists/near21.txt"], {"max_distance": {"pdq": 20}}, 0.0),
        (["lists/near21.txt"], {"max_distance": 20}, 0.0),  # one number: every kind
        (["lists/near21.txt"], {}, 1.0),  # the default, 31
        ([{"path": "lists/near21.txt", "max_distance": {"pdq": 20}}], {}, 0.0),  # this list is stricter
    ):
        compiled = scorer.compile(_spec("perceptual", lists, **options), _ctx(folder))
        assert compiled.score(batch).scores[0, 0] == expected, (lists, options)


def test_an_older_phash_list_still_matches_within_8(tmp_path: Path) -> None:
    original = _encode(_sample("astronaut"))
    ph = int(phash_hex(_frames(original)[0]), 16)
    (tmp_path / "old.txt").write_text(f"phash:{ph ^ 0b111:016x}  # 3 bits off\nphash:{ph ^ 0x1FF:016x}  # 9 bits off\n")
    compiled = scorer.compile(_spec("perceptual", ["old.txt"]), _ctx(tmp_path))
    out = compiled.score(_batch([original, _encode(_sample("coffee"))]))
    assert out.scores[:, 0].tolist() == [1.0, 0.0]
    assert out.evidence[0][0].startswith("old.txt:1 phash:") and "at distance 3 (<= 8)" in out.evidence[0][0]


def test_every_sampled_frame_is_hashed_and_the_closest_decides(tmp_path: Path) -> None:
    bad = _sample("astronaut").resize((128, 128))
    others = [_sample(n).resize((128, 128)) for n in ("coffee", "chelsea")]
    buf = io.BytesIO()
    others[0].save(buf, format="GIF", save_all=True, append_images=[others[1], bad], duration=100)
    gif = buf.getvalue()
    assert len(_frames(gif)) == 3
    (tmp_path / "l.txt").write_text(f"pdq {pdq_of(bad).hex}  # the third frame\n")
    compiled = scorer.compile(_spec("perceptual", ["l.txt"]), _ctx(tmp_path))
    batch = _batch([gif])
    out = compiled.score(batch)
    assert out.scores[0, 0] == 1.0 and out.evidence[0][0].endswith(" on frame 2")
    assert len(batch._memo["pdq"][0]) == 3  # one PDQ per frame, shared with every perceptual policy of the batch


def test_a_flat_image_is_recorded_as_low_quality_and_never_matched(tmp_path: Path) -> None:
    flat = _encode(Image.new("RGB", (300, 200), (120, 130, 140)))
    flat_pdq = pdq_of(_frames(flat)[0])
    assert flat_pdq.quality < 50
    (tmp_path / "l.txt").write_text(f"pdq {flat_pdq.hex}  # the very same hash\n")
    compiled = scorer.compile(_spec("perceptual", ["l.txt"], ("known_bad", "pdq_low_quality")), _ctx(tmp_path))
    out = compiled.score(_batch([flat, _encode(_sample("astronaut"))]))
    assert out.scores.tolist() == [[0.0, 1.0], [0.0, 0.0]]
    assert out.evidence[0][1] == f"PDQ quality {flat_pdq.quality} < 50: not matched by PDQ"
    strict = Settings(hashlist_pdq_min_quality=0)  # the cut-off is a setting: at 0 the same hash matches
    assert (
        scorer.compile(_spec("perceptual", ["l.txt"]), _ctx(tmp_path, strict)).score(_batch([flat])).scores[0, 0] == 1
    )


def test_the_quality_cut_off_and_the_distance_are_threatexchanges() -> None:
    from threatexchange.signal_type.pdq.pdq_utils import PDQ_CONFIDENT_MATCH_THRESHOLD
    from threatexchange.signal_type.pdq.signal import PdqSignal

    from moderator.hashlists import DEFAULT_MAX_DISTANCE, PDQ_MIN_QUALITY

    assert Settings().hashlist_pdq_min_quality == PDQ_MIN_QUALITY == PdqSignal.QUALITY_THRESHOLD
    assert DEFAULT_MAX_DISTANCE[HashKind.PDQ] == PDQ_CONFIDENT_MATCH_THRESHOLD


def test_pdq_is_computed_once_per_batch_for_every_perceptual_policy(listed: tuple[Path, bytes]) -> None:
    from moderator.hashlists import Pdq

    folder, original = listed
    a = scorer.compile(_spec("perceptual", ["lists/bad.txt"]), _ctx(folder))
    b = scorer.compile(_spec("perceptual", ["lists/bad.txt"]), _ctx(folder))
    batch = _batch([original])
    assert a.score(batch).scores[0, 0] == 1.0
    batch._memo["pdq"] = [[Pdq("0" * 64, 100)]]  # b must read the batch's hashes, not hash the frame again
    assert b.score(batch).scores[0, 0] == 0.0


def test_model_id_follows_list_content_provenance_included(listed: tuple[Path, bytes]) -> None:
    folder, _ = listed
    before = scorer.compile(_spec("exact", ["lists/bad.txt"]), _ctx(folder)).model_id
    with (folder / "lists" / "bad.txt").open("a") as f:
        f.write("sha256 " + "1" * 64 + "\n")
    after = scorer.compile(_spec("exact", ["lists/bad.txt"]), _ctx(folder)).model_id
    text = (folder / "lists" / "bad.txt").read_text()
    (folder / "lists" / "bad.txt").write_text(text.replace("1" * 64, "1" * 64 + " tags=moved"))
    retagged = scorer.compile(_spec("exact", ["lists/bad.txt"]), _ctx(folder)).model_id
    assert len({before, after, retagged}) == 3 and before.startswith("hashlist:exact:")


@pytest.mark.parametrize(
    ("options", "classes", "message"),
    [
        ({"lists": ["lists/bad.txt"], "max_distnace": 3}, ("c0",), "max_distnace"),
        ({"lists": []}, ("c0",), "lists"),
        ({"lists": ["lists/missing.txt"]}, ("c0",), "cannot read hash list"),
        ({"lists": ["lists/bad.txt"]}, ("c0", "c1"), "exactly one class"),
        ({"lists": ["lists/bad.txt"]}, ("c0", "pdq_low_quality"), "exactly one class"),  # exact: no PDQ
        ({"lists": ["lists/bad.txt"], "match": "perceptual", "max_distance": {"pdq": 129}}, ("c0",), "0..128"),
        ({"lists": ["lists/bad.txt"], "match": "perceptual", "max_distance": {"md5": 1}}, ("c0",), "max_distance"),
        ({"lists": [{"path": "lists/bad.txt", "max": 3}]}, ("c0",), "max"),
    ],
)
def test_bad_policies_are_refused(
    listed: tuple[Path, bytes], options: dict[str, Any], classes: tuple[str, ...], message: str
) -> None:
    spec = PolicySpec.model_validate(
        {
            "name": "known_bad",
            "mode": "multilabel",
            "scorer": "hashlist",
            "options": options,
            "classes": {c: {"threshold": 1.0, "action": "block"} for c in classes},
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


@pytest.mark.parametrize("kind", ["sha256", "md5"])
def test_scan_blocks_a_listed_file_without_decoding_it(tmp_path: Path, kind: str) -> None:
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
    (policies / "lists" / "known_bad.txt").write_text(f"{kind} {hashlib.new(kind, garbage).hexdigest()}  # case 1\n")
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
    settings, images, list_file = _listed_scan(tmp_path, shipped, f"md5 {hashlib.md5(garbage).hexdigest()}\n")
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
    list_file.write_text(list_file.read_text() + "sha256 " + "1" * 64 + "  # new\n")
    changed = Pipeline(settings, store).scan_targets([str(images)])
    assert (changed.scanned, changed.unchanged, changed.decisions["block"]) == (2, 0, 1)
    assert Pipeline(settings, store).scan_targets([str(images)]).unchanged == 2
    # a pdq line is no concern of an exact policy: its results stay current
    list_file.write_text(list_file.read_text() + "pdq " + "1" * 64 + "\n")
    assert Pipeline(settings, store).scan_targets([str(images)]).unchanged == 2
    store.close()


def test_a_long_lived_pipeline_matches_against_the_list_as_it_is_now_and_stores_the_provenance(
    tmp_path: Path,
) -> None:
    from fastapi.testclient import TestClient
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from moderator.pipeline import Pipeline
    from moderator.review import users
    from moderator.review.app import create_app
    from moderator.settings import SHIPPED_POLICIES
    from moderator.store import ExportFilters, Store
    from moderator.store.tables import Result, Role
    from tests.review.helpers import item_id, login

    settings, images, list_file = _listed_scan(tmp_path, [SHIPPED_POLICIES / "known_bad_similar.yaml"])
    original = _encode(_sample("astronaut"))
    (images / "copy.jpg").write_bytes(_near_copies()[0])
    (images / "other.png").write_bytes(_encode(_sample("coffee")))
    (images / "flat.png").write_bytes(_encode(Image.new("RGB", (64, 64), (9, 9, 9))))
    store = Store(settings.database_url)
    pipeline = Pipeline(settings, store)  # kept across scans, as a worker or the API keeps it

    first = pipeline.scan_targets([str(images)])
    assert dict(first.decisions) == {"allow": 3}  # against an empty list: nothing to match, no PDQ wanted
    pdq = pdq_of(_frames(original)[0]).hex
    list_file.write_text(f'pdq {pdq} source="gifct.csv:7" tags=terror,video_still  # case 31\n')
    again = pipeline.scan_targets([str(images)])
    assert (again.scanned, dict(again.decisions)) == (3, {"review": 1, "tag": 1, "allow": 1})
    rows = {Path(r.uri).name: r for r in store.iter_export(ExportFilters())}
    assert rows["copy.jpg"].decision == "review" and rows["other.png"].decision == "allow"
    assert rows["flat.png"].tags == ["pdq_low_quality"]
    assert pipeline.scan_targets([str(images)]).unchanged == 3

    with Session(store.engine) as db:
        fired = db.scalars(select(Result.fired).where(Result.policy == "known_bad_similar")).all()
        users.add_user(db, "rita", Role.REVIEWER, "rita-reviews-1")
        db.commit()
    evidence = next(f[0]["evidence"] for f in fired if f and f[0]["name"] == "known_bad_similar")
    assert evidence.startswith(f"lists/known_bad.txt:1 pdq:{pdq} (case 31) at distance ")
    assert evidence.endswith("(<= 31) source=gifct.csv:7 tags=terror,video_still")

    client = TestClient(create_app(settings, store), follow_redirects=False)
    login(client, "rita", "rita-reviews-1")
    page = client.get(f"/items/{item_id(store, str(images / 'copy.jpg'))}").text
    for shown in (f"lists/known_bad.txt:1 pdq:{pdq}", "at distance", "source=gifct.csv:7", "tags=terror,video_still"):
        assert shown in page
    store.close()


def test_hashes_of_a_frame_are_metas_pdq() -> None:
    from threatexchange.signal_type.pdq.pdq_hasher import pdq_from_bytes

    data = _encode(_sample("chelsea"))
    ours = pdq_of(_frames(data)[0])
    assert (ours.hex, ours.quality) == pdq_from_bytes(data)
    assert np.unique(list(ours.hex)).size > 4


def test_pdq_runs_on_the_sampled_frames_of_a_video_and_names_the_time(tmp_path: Path) -> None:
    from moderator.pipeline import Pipeline
    from moderator.settings import SHIPPED_POLICIES
    from moderator.store import ExportFilters, Store
    from tests.videos import video

    bad = _sample("astronaut").resize((128, 128))
    clean = [np.asarray(_sample(n).resize((128, 128))) for n in ("coffee", "chelsea")]
    # 4 s at 10 fps: two seconds of other pictures, then the listed one
    frames = [clean[i // 10] for i in range(20)] + [np.asarray(bad)] * 20
    settings, images, _ = _listed_scan(
        tmp_path, [SHIPPED_POLICIES / "known_bad_similar.yaml"], f"pdq {pdq_of(bad).hex}  # listed still\n"
    )
    (images / "clip.mp4").write_bytes(video("mp4", fps=10, size=(128, 128), frames=frames))
    (images / "other.mp4").write_bytes(video("mp4", fps=10, size=(128, 128), frames=frames[:20]))
    store = Store(settings.database_url)
    summary = Pipeline(settings, store).scan_targets([str(images)])
    assert summary.scanned == 2 and summary.decisions == {"review": 1, "allow": 1}
    rows = {Path(r.uri).name: r for r in store.iter_export(ExportFilters())}
    assert rows["clip.mp4"].decision == "review" and rows["other.mp4"].decision == "allow"
    store.close()
    [fired] = [f for f in rows["clip.mp4"].fired if f["name"] == "known_bad_similar"]
    evidence = fired["evidence"]
    assert "listed still" in evidence and evidence.endswith(" s"), evidence  # the entry, and the frame's time
    seconds = float(evidence.rsplit(" at ", 1)[1].removesuffix(" s"))
    assert seconds >= 2.0, evidence  # a frame of the listed picture, not of the first two seconds
