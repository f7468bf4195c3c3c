"""Test-only plugins: a source, `testsrc://FOLDER` (local files read slowly, flakily or fatally), and a
byte scorer, `testfault`, that fails on marked bytes the way a hostile image fails a real decoder.

Workers load them through MODERATOR_WORKER_IMPORTS=["tests.workers.testsource"], the same
setting an operator uses for an extra plugin; nothing in moderator knows about them.
- TESTSRC_READ_DELAY (seconds) slows every read, so a test can act while a job runs;
- reading a file whose name contains "poison" ends the process at once (os._exit), as a
  crashing decoder or the OOM killer would;
- the first read of a file whose name contains "flaky" writes TESTSRC_STATE/flaky.started, waits
  for TESTSRC_STATE/flaky.go (the test stops the broker meanwhile) and raises ConnectionError, a
  transient failure; later reads succeed;
- the `testfault` scorer, on bytes that contain MEMHOG, raises MemoryError the first time and ends
  the process every later time (a huge image: sometimes MemoryError, sometimes the OOM killer);
  its delivery count per file lives in TESTSRC_STATE.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from moderator import plugins
from moderator.scorers import ClassScores, ScorerContext, ScorerInput, ScoringBatch
from moderator.settings import Settings
from moderator.sources.files import FileSource
from moderator.types import SourceItem

SCHEME = "testsrc://"
MEMHOG = b"MEMHOG"


def _state() -> Path:
    return Path(os.environ["TESTSRC_STATE"])


def _bump(name: str) -> int:
    """Times this was called before, across processes (a counter file in TESTSRC_STATE)."""
    counter = _state() / f"{name}.count"
    before = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(before + 1))
    return before


class SlowOrFatalSource:
    name = "testsrc"
    priority = 50

    def claims(self, target: str) -> bool:
        return target.startswith(SCHEME)

    def iter_items(self, target: str, settings: Settings) -> Iterator[SourceItem]:
        for item in FileSource().iter_items(target.removeprefix(SCHEME), settings):
            uri = SCHEME + item.uri
            yield replace(item, uri=uri, read=partial(self.read, uri, settings))

    def count(self, target: str, settings: Settings) -> int | None:
        return FileSource().count(target.removeprefix(SCHEME), settings)

    def read(self, uri: str, settings: Settings) -> bytes:
        path = Path(uri.removeprefix(SCHEME))
        time.sleep(float(os.environ.get("TESTSRC_READ_DELAY", "0")))
        if "poison" in path.name:
            os._exit(13)
        if "flaky" in path.name and _bump(path.name) == 0:
            (_state() / "flaky.started").touch()
            deadline = time.monotonic() + 120
            while not (_state() / "flaky.go").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            raise ConnectionError(f"{path.name}: connection reset (test)")
        return path.read_bytes()


class FaultScorer:
    input = ScorerInput.BYTES
    model_id = "testfault"
    class_names = ["hit"]

    def score(self, batch: ScoringBatch) -> ClassScores:
        for data, sha in zip(batch.data or [], batch.sha256, strict=True):
            if MEMHOG in data:
                if _bump(sha) == 0:
                    raise MemoryError("test: cannot allocate 21 GB for this image")
                os._exit(13)
        n = len(batch.sha256)
        return ClassScores(np.zeros((n, 1), dtype=np.float32), [[""] for _ in range(n)])


class FaultPlugin:
    name = "testfault"
    input = ScorerInput.BYTES

    def compile(self, spec: Any, ctx: ScorerContext) -> FaultScorer:
        return FaultScorer()


plugins.add("moderator.sources", "testsrc", SlowOrFatalSource())
plugins.add("moderator.scorers", "testfault", FaultPlugin())
