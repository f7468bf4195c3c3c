"""The one path from bytes to model inputs: read -> sha256 -> size limit -> decode -> preprocess -> embed.

Every entry point goes through a Preparer: the scan and the queue workers (pipeline.py), `policy
test`, `eval`, `probe train`, search by image and the API, on source items or on bytes in memory
(items_from_bytes). Only the stages the policies need run (Needs): frames are kept only for image
scorers, CLIP loads only when an embedding has to be computed. Stored embeddings are reused per
sha256 and model; new ones are stored as float16 and used exactly as stored, so a later re-score
gives the same answer.

Reading and decoding of batch k+1 run in a background thread, reader threads and the decode
worker processes while the caller embeds and scores batch k (Preparer.batches, stages.prefetch);
every stage is timed. Decoding + preprocessing of one item (moderator.decode.decode_frames:
bytes in, uint8 crops and bounded frames out) runs in a worker process under a memory cap and a
time limit (decode_pool: the one sizing rule), so a file that crashes, spins or exhausts its
decoder is recorded with its reason (decoder_crashed, decode_timeout, too_large) and costs only itself.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from moderator.decode import CropSpec, DecodedFrames, DecodeError, DecodePool, FrameRequest, decode_frames, shared_pool
from moderator.decode.video import VideoLimits, sniff
from moderator.models import load_clip, model_id_for
from moderator.stages import StageTimer, chunked, prefetch, same, timed
from moderator.types import Action, ItemStatus, PolicyResult, SourceItem

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

    from moderator.models.clip import ClipModel
    from moderator.settings import Settings
    from moderator.store import Store

IMAGE_DRAFT = 256  # shortest side decoded for image scorers (open_nsfw and phash work at <= 256)
META_KEYS = ("format", "width", "height", "frames", "duration", "frame_times")


@dataclass(frozen=True)
class Needs:
    """What the policies read, hence which stages run."""

    images: bool = False  # decoded frames (image scorers)
    embeddings: bool = False  # CLIP image embeddings (embedding scorers)


@dataclass
class PreparedItem:
    item: SourceItem
    sha256: str | None = None
    size: int | None = None
    data: bytes | None = None
    frames: list[Image.Image] | None = None
    pixels: torch.Tensor | None = None  # the model input of each frame (ClipModel.preprocess_batch)
    embedding: np.ndarray | None = None  # [frames, d] float32, as stored
    status: ItemStatus = ItemStatus.OK
    error: str | None = None
    reason: str | None = None  # short machine-readable cause of an error or skip
    settled: bool = False  # decided before decoding (exact hash-list block)
    results: list[PolicyResult] = field(default_factory=list)
    decision: Action | None = None

    @property
    def ok(self) -> bool:
        return self.status is ItemStatus.OK

    def fail(self, status: ItemStatus, reason: str, message: str) -> None:
        self.status, self.reason, self.error = status, reason, message
        self.data = self.frames = self.pixels = self.embedding = None


class Skip(Protocol):
    """Which items need no work (the scan's skip-unchanged): asked before and after reading."""

    def before_read(self, batch: list[SourceItem]) -> list[SourceItem]: ...

    def after_read(self, items: list[PreparedItem]) -> list[PreparedItem]: ...


ByteStage = Callable[[list[PreparedItem]], None]


# --- items from memory and files ---------------------------------------------------------


def items_from_bytes(named: Iterable[tuple[str, bytes]]) -> list[SourceItem]:
    """In-memory images (an upload, an API request) as source items: `name` is what errors say."""
    return [SourceItem(uri=name, read=_constant(data), size=len(data)) for name, data in named]


def items_from_files(paths: Iterable[Path | str]) -> list[SourceItem]:
    return [SourceItem(uri=str(path), read=Path(path).read_bytes) for path in paths]


def _constant(data: bytes) -> Callable[[], bytes]:
    return lambda: data


# --- decoding one item (module level, picklable in and out) ---------------------------------


@dataclass(frozen=True)
class DecodeSpec:
    """How to decode one item: limits, JPEG draft size, what to keep."""

    max_pixels: int
    max_frames: int
    draft_size: int
    keep_frames: bool  # image scorers read the frames (reduced to IMAGE_DRAFT on the shorter side)
    crop: CropSpec | None = None  # the model's input geometry (ClipModel.crop); None: no model input
    video: VideoLimits = field(default_factory=VideoLimits)

    def request(self) -> FrameRequest:
        keep = IMAGE_DRAFT if self.keep_frames else None
        return FrameRequest(
            self.max_pixels, self.max_frames, self.draft_size, crop=self.crop, keep_side=keep, video=self.video
        )


@dataclass
class DecodeOutcome:
    meta: dict[str, Any] = field(default_factory=dict)
    frames: list[Image.Image] | None = None
    pixels: Any = None
    reason: str | None = None  # a DecodeFailure value when decoding failed
    error: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # decode, preprocess


def decode_one(data: bytes, spec: DecodeSpec) -> DecodeOutcome:
    """Bytes -> frames and model input (or the reason why not), in this process. Never raises for bad input.

    Preparer runs decode_frames(data, spec.request()) in the decode workers and to_outcome() here.
    """
    try:
        return to_outcome(decode_frames(data, spec.request()))
    except DecodeError as exc:
        return to_outcome(exc)


def to_outcome(result: DecodedFrames | DecodeError) -> DecodeOutcome:
    """What decode_frames gave (or the DecodeError raised, or standing for a crashed or stopped worker)."""
    if isinstance(result, DecodeError):
        return DecodeOutcome(reason=str(result.reason), error=str(result))
    meta: dict[str, Any] = {
        "format": result.format,
        "width": result.width,
        "height": result.height,
        "frames": result.n_frames,
    }
    if result.times is not None:  # a video: where each sampled frame is (the evidence names the worst one's)
        meta.update(duration=result.duration, frame_times=result.times)
    pixels = None
    if result.crops is not None:
        import torch

        pixels = torch.from_numpy(result.crops)  # uint8 [frames, H, W, 3]: ClipModel.encode_images normalises
    return DecodeOutcome(meta=meta, frames=result.frames, pixels=pixels, seconds=dict(result.seconds))


def decode_workers(settings: Settings) -> int:
    """Decode threads: one per core. The model's own threads use the cores too; more decoders would only
    queue behind them (the prefetch depth, not the thread count, is what hides decoding)."""
    return settings.decode_workers or max(2, os.cpu_count() or 1)


@contextmanager
def decode_pool(settings: Settings) -> Iterator[DecodePool]:
    """The decode worker processes, for every caller: this process's, kept warm between scans."""
    yield shared_pool(
        decode_workers(settings), memory_mb=settings.decode_memory_mb, timeout_s=settings.decode_timeout_s
    )


def allow_pixels_up_to(limit: int) -> None:
    """Let Pillow open images up to the configured limit (decode refuses above it).

    Pillow's bomb limit is a process global: it is raised here, before decode threads start,
    and never lowered (decode_image checks the setting itself).
    """
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit


# --- the stages ---------------------------------------------------------------------------


class Preparer:
    """Source items -> PreparedItems with what the policies need, batch by batch.

    `byte_stage` runs on the bytes before anything is decoded (byte scorers: an item it
    settles is never decoded nor embedded); `skip` drops items that need no work. With a
    store, stored embeddings are reused and new ones saved (unless `save` is False).
    """

    def __init__(
        self,
        settings: Settings,
        needs: Needs,
        *,
        store: Store | None = None,
        save: bool = True,
        clip: Callable[[], ClipModel] | None = None,
        timer: StageTimer | None = None,
        skip: Skip | None = None,
        byte_stage: ByteStage | None = None,
    ) -> None:
        self.settings = settings
        self.needs = needs
        self.store = store
        self.save = save
        self.timer = timer or StageTimer()
        self.skip = skip
        self.byte_stage = byte_stage
        self.model_id = model_id_for(settings)
        self._load_clip: Callable[[], ClipModel] = clip or (lambda: load_clip(settings))
        self._clip: ClipModel | None = None
        self._clip_lock = threading.Lock()
        allow_pixels_up_to(settings.max_image_pixels)

    def clip(self) -> ClipModel:
        """The model, loaded on first need (raises ScorerUnavailable without weights)."""
        with self._clip_lock:
            if self._clip is None:
                self._clip = self._load_clip()
            return self._clip

    def batches(self, items: Iterable[SourceItem]) -> Generator[list[PreparedItem], None, None]:
        """Every item that needs work, in order, a batch at a time, ready to score.

        Three stages run at once: a thread pulling batches from the source (listing, archive
        streams), a thread preparing the next batch (bytes, hashes, byte stage, decode in the
        pool) and the caller's thread (the model here, then whatever the caller does with the
        batch). Closing the generator stops the background threads.
        """
        readers = ThreadPoolExecutor(decode_workers(self.settings), thread_name_prefix="moderator-read")
        with decode_pool(self.settings) as pool, readers:
            reader = prefetch(timed(chunked(items, self.settings.batch_size), self.timer, "source"), same)
            ready = prefetch(reader, lambda chunk: self.prepare(chunk, pool, readers))
            try:
                for batch in ready:
                    self.embed(batch)
                    yield batch
            finally:
                ready.close()

    def prepare_all(self, items: Iterable[SourceItem]) -> list[PreparedItem]:
        """batches() flattened: for a few items (policy test, search by image)."""
        return [p for batch in self.batches(items) for p in batch]

    def prepare(self, batch: list[SourceItem], pool: DecodePool, readers: Executor) -> list[PreparedItem]:
        """Read (in threads), byte stage, skip, stored embeddings, decode (in the pool): everything before the model."""
        if self.skip is not None:
            batch = self.skip.before_read(batch)
        items = [PreparedItem(item) for item in batch]
        for p in items:
            if p.item.skip_reason:
                p.fail(ItemStatus.SKIPPED, "skipped", p.item.skip_reason)
        list(readers.map(self._read, [p for p in items if p.ok]))
        if self.byte_stage is not None:
            self.byte_stage(items)
        if self.skip is not None:
            items = self.skip.after_read(items)
        self._load_embeddings(items)
        self._decode(items, pool)
        for p in items:
            p.data = None  # byte scorers have run; nothing later reads the bytes
        return items

    def _read(self, p: PreparedItem) -> None:
        limit = self.settings.max_image_bytes
        if p.item.size is not None and p.item.size > limit:
            p.fail(ItemStatus.ERROR, "too_large", f"{p.item.size} bytes is over MODERATOR_MAX_IMAGE_BYTES={limit}")
            return
        with self.timer.time("read"):
            try:
                data = p.item.read()
            except Exception as exc:  # any source failure is this item's error; the batch goes on
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
                p.fail(ItemStatus.ERROR, "read_failed", f"cannot read: {why}")
                return
        p.size = len(data)
        p.sha256 = hashlib.sha256(data).hexdigest()
        if len(data) > limit:
            p.fail(ItemStatus.ERROR, "too_large", f"{len(data)} bytes is over MODERATOR_MAX_IMAGE_BYTES={limit}")
            return
        p.data = data

    def _load_embeddings(self, items: list[PreparedItem]) -> None:
        if not self.needs.embeddings or self.store is None:
            return
        wanted = [p for p in items if p.sha256 and p.ok and not p.settled]
        if not wanted:
            return
        with self.timer.time("lookup"):
            stored = self.store.load_embeddings(sorted({p.sha256 for p in wanted if p.sha256}), self.model_id)
        for p in wanted:
            if p.sha256 in stored:
                p.embedding = stored[p.sha256].astype("float32")

    def _decode(self, items: list[PreparedItem], pool: DecodePool) -> None:
        # A video with a stored embedding is still decoded (without model input): its frames' timestamps.
        todo = [
            p
            for p in items
            if p.ok and not p.settled and (self.needs.images or p.embedding is None or sniff(p.data or b""))
        ]
        first: dict[str | None, PreparedItem] = {}
        twins = [(p, first.setdefault(p.sha256, p)) for p in todo]  # identical bytes: decoded and embedded once
        originals = list(first.values())
        model_input = [self.needs.embeddings and p.embedding is None for p in originals]
        specs = {flag: self._spec(model_input=flag) for flag in set(model_input)}
        requests = [specs[f].request() for f in model_input]
        outcomes: dict[int, DecodeOutcome] = self._decode_on_device(originals, model_input)
        rest = [i for i in range(len(originals)) if i not in outcomes]  # the CPU path: the worker processes
        done = pool.map(decode_frames, [originals[i].data or b"" for i in rest], [requests[i] for i in rest])
        outcomes.update(zip(rest, map(to_outcome, done), strict=True))
        for p, outcome in zip(originals, (outcomes[i] for i in range(len(originals))), strict=True):
            for stage, seconds in outcome.seconds.items():
                self.timer.add(stage, seconds)
            p.item.meta.update(outcome.meta)
            if outcome.reason is not None:
                p.fail(ItemStatus.ERROR, outcome.reason, outcome.error or outcome.reason)
                continue
            p.frames, p.pixels = outcome.frames, outcome.pixels
        for p, original in twins:
            if p is not original:
                p.frames = original.frames
                p.item.meta.update({k: original.item.meta.get(k) for k in META_KEYS})
                if not original.ok:
                    p.fail(original.status, original.reason or "error", original.error or "")

    def _decode_on_device(self, originals: list[PreparedItem], model_input: list[bool]) -> dict[int, DecodeOutcome]:
        """JPEGs needing model input, decoded on the GPU in this process (never in a forked worker), by index;
        what the GPU decoder does not take is left out, for the CPU path to decode and judge."""
        clip = self.clip() if self.settings.gpu_decode and any(model_input) else None
        if clip is None or not clip.device.startswith("cuda"):
            return {}
        from moderator.models.gpu_decode import DeviceJpegDecoder, device_mode

        if device_mode(clip.crop) is None:
            return {}
        decoder = DeviceJpegDecoder(
            clip.crop,
            clip.device,
            max_pixels=self.settings.max_image_pixels,
            max_bytes=self.settings.max_image_bytes,
            frame_size=IMAGE_DRAFT if self.needs.images else None,
        )
        wanted = [i for i, flag in enumerate(model_input) if flag]
        with self.timer.time("decode"):
            results = decoder.decode([originals[i].data or b"" for i in wanted])
        return {
            i: DecodeOutcome(
                meta={"format": "JPEG", "width": r.width, "height": r.height, "frames": 1},
                frames=[r.frame] if r.frame is not None else None,
                pixels=r.pixels,
            )
            for i, r in zip(wanted, results, strict=True)
            if r is not None
        }

    def _spec(self, *, model_input: bool) -> DecodeSpec:
        clip = self.clip() if model_input else None
        draft = max(clip.image_size if clip else 0, IMAGE_DRAFT if self.needs.images or not clip else 0)
        return DecodeSpec(
            max_pixels=self.settings.max_image_pixels,
            max_frames=self.settings.max_frames,
            draft_size=draft,
            keep_frames=self.needs.images,
            crop=clip.crop if clip else None,
            video=VideoLimits(
                self.settings.video_frames, self.settings.video_max_seconds, self.settings.video_max_frames
            ),
        )

    def embed(self, items: Sequence[PreparedItem]) -> None:
        """Model inputs -> embeddings, in model batches; new ones stored (float16) and used as stored."""
        todo = [p for p in items if p.pixels is not None and p.embedding is None]
        if not todo:
            return
        import numpy as np
        import torch

        clip = self.clip()
        with self.timer.time("embed"):
            pixels = torch.cat([p.pixels for p in todo if p.pixels is not None])
            size = self.settings.batch_size
            features = np.concatenate([clip.encode_images(pixels[i : i + size]) for i in range(0, len(pixels), size)])
        new: dict[str, np.ndarray] = {}
        row = 0
        for p in todo:
            n = len(p.pixels) if p.pixels is not None else 0
            stored = features[row : row + n].astype(np.float16)  # scored exactly as stored
            row += n
            p.embedding, p.pixels = stored.astype(np.float32), None
            if p.sha256:
                new[p.sha256] = stored
        if self.store is not None and self.save:
            with self.timer.time("store_embeddings"):
                self.store.save_embeddings(new, self.model_id)
        for p in items:  # identical bytes in one batch are embedded once
            if p.embedding is None and p.sha256 in new and p.ok:
                p.embedding = new[p.sha256].astype(np.float32)
