"""A test-only source plugin, `testsrc://FOLDER`: local files read slowly, or fatally.

Workers load it through MODERATOR_WORKER_IMPORTS=["tests.workers.testsource"], the same
setting an operator uses for an extra plugin; nothing in moderator knows about it.
- TESTSRC_READ_DELAY (seconds) slows every read, so a test can act while a job runs;
- reading a file whose name contains "poison" ends the process at once (os._exit), as a
  crashing decoder or the OOM killer would.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path

from moderator import plugins
from moderator.settings import Settings
from moderator.sources.files import FileSource
from moderator.types import SourceItem

SCHEME = "testsrc://"


class SlowOrFatalSource:
    name = "testsrc"
    priority = 50

    def claims(self, target: str) -> bool:
        return target.startswith(SCHEME)

    def iter_items(self, target: str, settings: Settings) -> Iterator[SourceItem]:
        for item in FileSource().iter_items(target.removeprefix(SCHEME), settings):
            uri = SCHEME + item.uri
            yield replace(item, uri=uri, read=partial(self.read, uri, settings))

    def read(self, uri: str, settings: Settings) -> bytes:
        path = Path(uri.removeprefix(SCHEME))
        time.sleep(float(os.environ.get("TESTSRC_READ_DELAY", "0")))
        if "poison" in path.name:
            os._exit(13)
        return path.read_bytes()


plugins.add("moderator.sources", "testsrc", SlowOrFatalSource())
