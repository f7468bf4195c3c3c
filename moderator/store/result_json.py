"""A result's stored columns (action, and the JSON of scores, fired, tags), byte for byte as
Store.save_items writes them, for bulk writers that bypass SQLAlchemy's per-row processing.

encode_result is the reference (repository._result_row through the engine's JSON
serializer). ResultEncoder writes the same text from plain lists for one policy,
formatting only the numbers per row: class names, actions, evidence and tag sets are
encoded once. The tests check the two agree.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import NamedTuple

from moderator.store.repository import _result_row
from moderator.types import Action, PolicyResult

# The engine's JSON serializer (store/engine.py), built once: json.dumps with these
# arguments builds a new encoder per call, which is most of its cost on small values.
_JSON = json.JSONEncoder(default=str, ensure_ascii=False)
BY_SEVERITY = sorted(Action, key=lambda a: a.severity)
EMPTY = _JSON.encode([])
_ALLOW = Action.ALLOW.value
_TAG = Action.TAG.severity


class EncodedResult(NamedTuple):
    action: str
    scores: str
    fired: str
    tags: str


def encode_result(result: PolicyResult) -> EncodedResult:
    row = _result_row(0, result, None)
    return EncodedResult(
        result.action.value, _JSON.encode(row["scores"]), _JSON.encode(row["fired"]), _JSON.encode(row["tags"])
    )


def _literal(value: object) -> str:
    """JSON of a constant, safe inside a %-format."""
    return _JSON.encode(value).replace("%", "%%")


class ResultEncoder:
    """encode_result for one policy's classes, from per-class lists (scores, fired severity, threshold, evidence).

    JSON writes a float as float.__repr__, which is what %r gives a Python float.
    """

    def __init__(self, classes: Sequence[str]) -> None:
        self.classes = tuple(classes)
        self._scores = "{" + ", ".join(f"{_literal(c)}: %r" for c in self.classes) + "}"
        # [class][severity]: a fired entry with the score, threshold and evidence left to fill.
        self._fired = [
            [
                "{"
                + f'"name": {_literal(c)}, "action": {_literal(a.value)}, "score": %r, "threshold": %r, "evidence": %s'
                + "}"
                for a in BY_SEVERITY
            ]
            for c in self.classes
        ]
        self._texts: dict[str, str] = {}
        self._tags: dict[tuple[int, ...], str] = {(): EMPTY}

    def encode(
        self, scores: Sequence[float], severity: Sequence[int], threshold: Sequence[float], evidence: Sequence[str]
    ) -> EncodedResult:
        score_text = self._scores % tuple(scores)
        fired = [j for j, sev in enumerate(severity) if sev]
        if not fired:
            return EncodedResult(_ALLOW, score_text, EMPTY, EMPTY)
        parts = [self._fired[j][severity[j]] % (scores[j], threshold[j], self._text(evidence[j])) for j in fired]
        tagged = tuple(j for j in fired if severity[j] == _TAG)
        tags = self._tags.get(tagged)
        if tags is None:
            tags = self._tags[tagged] = _JSON.encode([self.classes[j] for j in tagged])
        action = BY_SEVERITY[max(severity[j] for j in fired)].value
        return EncodedResult(action, score_text, "[" + ", ".join(parts) + "]", tags)

    def _text(self, value: str) -> str:
        found = self._texts.get(value)
        if found is None:
            found = self._texts[value] = _JSON.encode(value)
        return found
