"""The model side of POST /api/moderate: worker threads own the Pipelines and batch requests.

Requests from the event loop join a bounded queue; a worker takes the first, takes what is
queued and, while other requests are still arriving, waits up to `moderate_batch_window_ms`
for them (up to `moderate_max_batch`), then scores the batch with ONE `Pipeline.scan` per
policy selection: the scan's own path (read, sha256, skip unchanged, byte policies, decode
in the pool, one model call, score, decide, store in one transaction). Same bytes whose
stored results are current are the scan's "unchanged": no model runs. `moderate_workers`
threads (each its own Pipelines; the model is shared and its calls take turns) overlap one
batch's reading and decoding with another's model call, as the scan does within itself.

The policies and models are loaded when the service starts (the app's lifespan), in the
worker threads, never on a request; requests that arrive before the load ends wait for it.
More than `moderate_max_pending` requests at once are refused (Overloaded -> 503).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from moderator.engine.prepare import PreparedItem, items_from_bytes
from moderator.types import PolicySkipped, SourceItem

if TYPE_CHECKING:
    from moderator.pipeline import Pipeline
    from moderator.policy.load import LoadedPolicy
    from moderator.settings import Settings
    from moderator.store import Store

log = logging.getLogger("moderator.review.moderate")
PIPELINES_KEPT = 16  # distinct `policies` selections kept compiled (the model itself is shared)
PipelineFactory = Callable[["Settings", "Store", "list[LoadedPolicy]"], "Pipeline"]


class Overloaded(Exception):
    """More requests are held than moderate_max_pending: answer 503 with Retry-After."""


class Unavailable(Exception):
    """The service cannot score (turned off, or its policies did not load): answer 503."""


@dataclass(frozen=True)
class Outcome:
    """What the worker did for one request; the route reads the stored item by `uri`."""

    uri: str
    scored: bool  # False: answered from the store (stored results current, no model run)
    policies: list[str]  # the policies that judged it
    not_run: list[PolicySkipped]
    reason: str | None  # the machine reason when the item was recorded as an error or skip
    batch_size: int  # requests scored together in this model batch
    seconds: dict[str, float]  # queue (waiting for the worker) and the pipeline's stages


@dataclass
class _Job:
    item: SourceItem
    policies: tuple[str, ...] | None
    external_id: str | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Outcome]
    queued: float = field(default_factory=time.perf_counter)


def _settle(job: _Job, value: Outcome | BaseException) -> None:
    def put() -> None:
        if job.future.done():  # the caller went away (disconnect): nothing to answer
            return
        if isinstance(value, BaseException):
            job.future.set_exception(value)
        else:
            job.future.set_result(value)

    with contextlib.suppress(RuntimeError):  # the loop closed (server shutting down): nobody waits
        job.loop.call_soon_threadsafe(put)


def _default_factory(settings: Settings, store: Store, policies: list[LoadedPolicy]) -> Pipeline:
    from moderator.pipeline import Pipeline

    return Pipeline(settings, store, policies)


class Arrival:
    def __init__(self, service: ModerateService) -> None:
        self._service = service
        self._done = False
        with service._lock:
            service._arriving += 1

    def done(self) -> None:
        with self._service._lock:
            if not self._done:
                self._done = True
                self._service._arriving -= 1


class ModerateService:
    def __init__(self, settings: Settings, store: Store, factory: PipelineFactory | None = None) -> None:
        self.settings = settings
        self.store = store
        self.factory = factory or _default_factory
        self.window = settings.moderate_batch_window_ms / 1000
        self.max_batch = settings.moderate_max_batch or settings.batch_size
        self.max_pending = settings.moderate_max_pending
        self.error: str | None = None  # why nothing can be scored (set once, by the load)
        self.configured: dict[str, LoadedPolicy] = {}
        self.batch_sizes: deque[int] = deque(maxlen=10_000)  # requests per model batch, newest last
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._pending = 0
        self._arriving = 0
        self._lock = threading.Lock()
        self._collecting = threading.Lock()
        self._ready = threading.Event()
        self._loaded = threading.Event()  # the policies are read (the first worker's load)
        self._workers = [_Worker(self, i) for i in range(settings.moderate_workers)]
        self._starting = len(self._workers)
        self._threads: list[threading.Thread] = []

    # -- lifecycle (the app's lifespan) ----------------------------------------------------

    def start(self) -> None:
        for worker in self._workers:
            thread = threading.Thread(target=worker.run, name=f"moderator-moderate-{worker.index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    def stop(self, timeout: float = 60) -> None:
        for _ in self._threads:
            self._queue.put(None)  # one each: a worker takes one and ends after its batch in hand
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending

    @property
    def arriving(self) -> int:
        with self._lock:
            return self._arriving

    def arrival(self) -> Arrival:
        """A request on its way (credentials checked, body streaming in): the worker's window waits only
        while someone is arriving. Call done() when it is queued (or failed)."""
        return Arrival(self)

    # -- the event loop's side ---------------------------------------------------------------

    async def submit(
        self,
        item: SourceItem,
        policies: tuple[str, ...] | None,
        external_id: str | None,
        arrival: Arrival | None = None,
    ) -> Outcome:
        """Queue one item and wait for its outcome; Overloaded at once when the queue is full. The request's
        `arrival` ends once it is queued (never before: the worker's window must not miss it)."""
        try:
            with self._lock:
                if self._pending >= self.max_pending:
                    raise Overloaded(f"{self._pending} requests are being moderated (moderate_max_pending)")
                self._pending += 1
            loop = asyncio.get_running_loop()
            job = _Job(item, policies, external_id, loop, loop.create_future())
            self._queue.put(job)
        finally:
            if arrival is not None:
                arrival.done()
        return await job.future

    # -- loading (in the worker threads) -------------------------------------------------------

    def _load(self, worker: _Worker) -> None:
        """The first worker reads the policies; every worker compiles the full set before the service is ready."""
        from moderator.policy.load import load_policies

        try:
            if worker.index == 0:
                try:
                    if not self.settings.moderate_api:
                        raise Unavailable("POST /api/moderate is turned off (MODERATOR_MODERATE_API=false)")
                    loaded = load_policies(self.settings.policy_paths())
                    self.configured = {p.name: p for p in loaded}
                    self._warm_up(worker.pipeline(None))
                finally:
                    self._loaded.set()
            else:
                self._loaded.wait()
                if self.error is None:
                    worker.pipeline(None)
        except Exception as exc:  # policies that do not load, a model that cannot: every request says why
            log.exception("POST /api/moderate cannot score")
            self.error = self.error or f"the server's policies or models did not load: {type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                self._starting -= 1
                if self._starting == 0:
                    self._ready.set()

    def _warm_up(self, pipeline: Pipeline) -> None:
        """One in-memory image through the whole path, stored nowhere: the decode workers start and the
        model runs once, so the first request pays neither."""
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (127, 127, 127)).save(buf, format="JPEG")
        items = items_from_bytes([("warm-up", buf.getvalue())])
        pipeline.policy_set.judge_all(items, self.settings)

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        """The first job and what is queued, up to max_batch; while other requests are still arriving (their
        bodies streaming in), up to the window for them too. A lone request does not wait."""
        batch = [first]
        deadline = time.perf_counter() + self.window
        while len(batch) < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                left = deadline - time.perf_counter()
                if left <= 0 or self.arriving == 0:
                    break
                try:
                    job = self._queue.get(timeout=min(left, 0.001))  # look at `arriving` again each ms
                except queue.Empty:
                    continue
            if job is None:
                return batch, True
            batch.append(job)
        return batch, False

    def _done(self, n: int) -> None:
        with self._lock:
            self._pending -= n


class _Worker:
    """One worker thread and its compiled pipelines (a Pipeline is used by one thread at a time). With
    several workers, one batch is read and decoded while another is in the model (the model's calls take
    turns: ClipModel holds a lock), as the scan overlaps batch k+1's decoding with batch k's model call."""

    def __init__(self, service: ModerateService, index: int) -> None:
        self.service = service
        self.index = index
        self._pipelines: OrderedDict[tuple[str, ...] | None, Pipeline] = OrderedDict()

    def run(self) -> None:
        service = self.service
        service._load(self)
        while True:
            with service._collecting:  # one worker forms a batch at a time: the next forms while this one runs
                first = service._queue.get()
                if first is None:
                    return
                batch, stop = service._collect(first)
            try:
                self._score_all(batch)
            finally:
                service._done(len(batch))
            if stop:
                return

    def pipeline(self, key: tuple[str, ...] | None) -> Pipeline:
        pipeline = self._pipelines.get(key)
        if pipeline is None:
            s = self.service
            chosen = list(s.configured.values()) if key is None else [s.configured[n] for n in key]
            pipeline = self._pipelines[key] = s.factory(s.settings, s.store, chosen)
            while len(self._pipelines) > PIPELINES_KEPT:
                oldest = next(k for k in self._pipelines if k is not None)  # the full set stays compiled
                del self._pipelines[oldest]
        self._pipelines.move_to_end(key)
        return pipeline

    def _score_all(self, batch: list[_Job]) -> None:
        if self.service.error is not None:
            for job in batch:
                _settle(job, Unavailable(self.service.error))
            return
        groups: dict[tuple[str, ...] | None, list[_Job]] = {}
        for job in batch:
            groups.setdefault(job.policies, []).append(job)
        for key, jobs in groups.items():
            try:
                self._score(key, jobs)
            except Exception as exc:  # the store is down, a scorer failed: these requests fail, the service goes on
                log.exception("moderating %d item(s) failed", len(jobs))
                for job in jobs:
                    _settle(job, exc)

    def _score(self, key: tuple[str, ...] | None, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        pipeline = self.pipeline(key)
        self.service.batch_sizes.append(len(jobs))
        stored: dict[str, PreparedItem] = {}

        def seen(batch: list[PreparedItem]) -> None:
            stored.update((p.item.uri, p) for p in batch)

        external_ids = {j.item.uri: j.external_id for j in jobs if j.external_id}
        before = pipeline.timer.snapshot()
        pipeline.scan([j.item for j in jobs], external_ids=external_ids, on_stored=seen)
        after = pipeline.timer.snapshot()
        stages = {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}
        stages["batch"] = time.perf_counter() - started
        names = sorted(pipeline.versions)
        for job in jobs:
            p = stored.get(job.item.uri)
            seconds = {"queue": started - job.queued, **stages}
            reason = p.reason if p is not None and not p.ok else None
            outcome = Outcome(job.item.uri, p is not None, names, list(pipeline.not_run), reason, len(jobs), seconds)
            _settle(job, outcome)
