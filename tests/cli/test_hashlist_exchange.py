"""`moderator hashlist import|export|fetch`: the formats people exchange, read and written, and
threatexchange's exchange clients (NCMEC records mapped; StopNCII fetched from a local server of its HTTP shape)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from typer.testing import CliRunner

from moderator.cli.hashlist import app
from moderator.hashlists import HashEntry, HashKind, load_hash_list
from moderator.hashlists.formats import ListFormat, read_list_file, write_list
from moderator.settings import Settings

PDQ = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"
PDQ2 = "e64cc9d91c623882f8d1f1d9a398e78c9f199b3bd83924f2b7e11e0bf861b064"
MD5 = "cab08b36195edb1a1231d2d09fa450e0"
SHA = "ab" * 32


def _run(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args))
    return result


def _entries(path: Path) -> list[tuple[HashKind, str, str, tuple[str, ...]]]:
    return [(e.kind, e.value, e.source, e.tags) for e in load_hash_list(path).entries]


def test_import_threatexchange_csv_keeps_collab_line_and_tags_and_leaves_out_negatives(tmp_path: Path) -> None:
    given = tmp_path / "collab.csv"
    given.write_text(
        "signal_type,signal_str,collab,category,tags\n"
        f"pdq,{PDQ},Sample Data,POSITIVE_CLASS,terror video_still\n"
        f"video_md5,{MD5.upper()},Sample Data,INVESTIGATION_SEED,\n"
        f"pdq,{PDQ2},Sample Data,NEGATIVE_CLASS,false_positive\n"
        "url,https://example.org/x,Sample Data,POSITIVE_CLASS,\n"
    )
    target = tmp_path / "team.txt"
    result = _run("import", str(given), "--list", str(target))
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith(
        "2 line(s) added, 0 already present, 1 marked not harmful left out, 1 of other signal types skipped"
    )
    assert _entries(target) == [
        (HashKind.PDQ, PDQ, "Sample Data (collab.csv:2)", ("terror", "video_still")),
        (HashKind.MD5, MD5, "Sample Data (collab.csv:3)", ("investigation_seed",)),
    ]
    again = _run("import", str(given), "--list", str(target))
    assert "0 line(s) added, 2 already present" in again.output


def test_import_threatexchange_text_dataset_lines_and_te_state_files(tmp_path: Path) -> None:
    lines = tmp_path / "signals.txt"
    lines.write_text(f"pdq {PDQ} 'Sample Data' POSITIVE_CLASS a1,b2\nvideo_md5 {MD5}\n")
    te = tmp_path / "simple.HASH_PDQ.te"
    te.write_text(f"{PDQ2},1234567,2021-04-01,label_a label_b\n")
    for given, fmt in ((lines, "threatexchange"), (te, "auto")):
        assert _run("import", str(given), "--list", str(tmp_path / "l.txt"), "--format", fmt).exit_code == 0
    assert _entries(tmp_path / "l.txt") == [
        (HashKind.PDQ, PDQ, "Sample Data (signals.txt:1)", ("a1", "b2")),
        (HashKind.MD5, MD5, "signals.txt:2", ()),
        (HashKind.PDQ, PDQ2, "simple.HASH_PDQ.te:1", ("label_a", "label_b")),
    ]
    assert load_hash_list(tmp_path / "l.txt").entries[2].label == "descriptor 1234567 added 2021-04-01"


def test_a_malformed_line_fails_the_import_and_writes_nothing(tmp_path: Path) -> None:
    given = tmp_path / "x.csv"
    given.write_text(f"signal_type,signal_str,collab,category,tags\npdq,{PDQ},c,POSITIVE_CLASS,\npdq,abc,c,,\n")
    result = _run("import", str(given), "--list", str(tmp_path / "l.txt"))
    assert result.exit_code == 2 and "x.csv:3: a pdq hash has 64 hex digits, got 3" in result.output
    assert not (tmp_path / "l.txt").exists()
    assert _run("import", str(given), "--list", str(tmp_path / "l.txt"), "--format", "xml").exit_code == 2


ENTRIES = [
    HashEntry(HashKind.PDQ, PDQ, "case 1", 0, "Sample Data (a.csv:2)", ("terror", "disputed")),
    HashEntry(HashKind.MD5, MD5, "", 0, "ncmec:Industry", ("A1",)),
    HashEntry(HashKind.SHA256, SHA, "mine", 0, "", ()),
    HashEntry(HashKind.PHASH, "8f373714acfcf4d0", "old", 0, "", ()),
]


@pytest.mark.parametrize("fmt", ["plain", "csv", "threatexchange"])
def test_export_then_import_round_trips(tmp_path: Path, fmt: str) -> None:
    listed = tmp_path / "mine.txt"
    listed.write_text(write_list(ENTRIES, ListFormat.PLAIN))
    exported = tmp_path / f"out.{'csv' if fmt == 'csv' else 'txt'}"
    result = _run("export", "--list", str(listed), "--format", fmt, "--out", str(exported))
    assert result.exit_code == 0, result.output
    assert _run("import", str(exported), "--list", str(tmp_path / "back.txt")).exit_code == 0  # format by content

    back = load_hash_list(tmp_path / "back.txt").entries
    assert [(e.kind, e.value) for e in back] == [(e.kind, e.value) for e in ENTRIES]
    if fmt == "plain":  # every column; an entry without a source now has one: the file and line it came from
        assert [(e.label, e.tags) for e in back] == [(e.label, e.tags) for e in ENTRIES]
        assert [e.source for e in back] == ["Sample Data (a.csv:2)", "ncmec:Industry", "out.txt:3", "out.txt:4"]
    if fmt == "threatexchange":  # the hashes only, as threatexchange's file exchange has them
        assert [e.source for e in back] == [f"out.txt:{n}" for n in range(1, 5)]
    if fmt == "csv":  # collab (our source) and tags; a doubtful category stays a category
        assert [e.tags for e in back] == [("terror", "disputed"), ("A1",), (), ()]
        assert back[1].source == "ncmec:Industry (out.csv:3)" and back[2].source == "mine (out.csv:4)"
        assert exported.read_text().splitlines()[1] == f"pdq,{PDQ},Sample Data (a.csv:2),DISPUTED,terror"


def test_threatexchange_reads_our_threatexchange_export_with_its_own_file_exchange(tmp_path: Path) -> None:
    from threatexchange.exchanges.impl.file_api import FileCollaborationConfig, LocalFileSignalExchangeAPI

    from moderator.hashlists.exchange import signal_types

    listed = tmp_path / "mine.txt"
    listed.write_text(write_list(ENTRIES, ListFormat.PLAIN))
    out = _run("export", "--list", str(listed), "--format", "threatexchange")
    assert out.exit_code == 0
    (tmp_path / "tx.txt").write_text(out.output)
    collab = FileCollaborationConfig(name="mine", api="local_file", enabled=True, filename=str(tmp_path / "tx.txt"))
    api = LocalFileSignalExchangeAPI(collab)
    state: dict[Any, Any] = {}
    for delta in api.fetch_iter(signal_types(), None):
        api.naive_fetch_merge(state, delta.updates)
    converted = api.naive_convert_to_signal_type(signal_types(), collab, state)
    assert {(t.get_name(), v) for t, signals in converted.items() for v in signals} == {
        ("pdq", PDQ),
        ("video_md5", MD5),
        ("video_sha256", SHA),
    }


def test_ncmec_records_map_to_entries_with_member_tags(tmp_path: Path) -> None:
    from threatexchange.exchanges.clients.ncmec.hash_api import NCMECEntryType, NCMECEntryUpdate

    from moderator.hashlists.exchange import ncmec_entries

    def record(id: str, member: int, kind: NCMECEntryType, fingerprints: dict[str, str], **kw: Any) -> Any:
        values = {"classification": "A1", "deleted": False, "feedback": {}} | kw
        return NCMECEntryUpdate(id, member, kind, fingerprints=fingerprints, **values)

    updates = {
        "1": record("1", 42, NCMECEntryType.image, {"pdq": PDQ.upper(), "md5": "0" * 32, "pdna": "x" * 40}),
        "2": record("2", 7, NCMECEntryType.video, {"md5": MD5}, classification="B1"),
        "3": record("3", 42, NCMECEntryType.image, {"pdq": PDQ2}, deleted=True),  # a tombstone
        "4": record("4", 42, NCMECEntryType.image, {"pdq": "not-a-pdq"}),  # threatexchange drops it
        "5": record("5", 9, NCMECEntryType.image, {"pdq": PDQ}, classification="A2"),
    }
    entries = ncmec_entries(updates, Settings())
    assert [(e.kind, e.value, e.source, e.tags) for e in entries] == [
        (HashKind.MD5, MD5, "ncmec:Industry", ("B1",)),
        (HashKind.PDQ, PDQ, "ncmec:Industry", ("A1", "A2")),  # image md5 and PhotoDNA are not fetched
    ]
    only_42 = ncmec_entries(updates, Settings(hashlist_ncmec_esp_ids=[42], hashlist_ncmec_environment="NGO"))
    assert [(e.value, e.source, e.tags) for e in only_42] == [(PDQ, "ncmec:NGO", ("A1",))]


class _StopNCII(BaseHTTPRequestHandler):
    pages: list[dict[str, Any]] = []
    seen: list[tuple[str, dict[str, list[str]], str | None]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlparse(self.path)
        query = parse_qs(url.query)
        self.seen.append((url.path, query, self.headers.get("x-functions-key")))
        page = self.pages[int(query.get("nextPageToken", ["0"])[0])]
        body = json.dumps(page).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def stopncii() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StopNCII)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _record(
    signal: str, value: str, status: str = "Active", feedback: str = "Blocked", tags: list[str] | None = None
) -> Any:
    return {
        "lastModtimestamp": 100,
        "signalType": signal,
        "hashValue": value,
        "hashStatus": status,
        "caseNumbers": {"case-1": status},
        "CSPFeedbacks": [{"feedbackValue": feedback, "tags": tags or [], "source": "csp-a"}],
    }


def test_fetch_from_stopncii_through_threatexchanges_client(
    tmp_path: Path, stopncii: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _StopNCII.seen = []
    _StopNCII.pages = [
        {
            "count": 2,
            "nextPageToken": "1",
            "nextSetTimestamp": 200,
            "hasMoreRecords": True,
            "hashRecords": [_record("ImagePDQ", PDQ, tags=["ncii"]), _record("Text", "some words")],
        },
        {
            "count": 2,
            "nextPageToken": None,
            "nextSetTimestamp": 300,
            "hasMoreRecords": False,
            "hashRecords": [
                _record("VideoMD5", MD5, feedback="NotBlocked"),
                _record("ImagePDQ", PDQ2, feedback="None"),
            ],
        },
    ]
    monkeypatch.setenv("TX_STOPNCII_KEYS", f"fetch-key,subscription-key,{stopncii}")
    target = tmp_path / "ncii.txt"
    result = _run("fetch", "--exchange", "stopncii", "--list", str(target))
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith("3 line(s) added, 0 already present")
    assert sorted(_entries(target)) == sorted(
        [
            (HashKind.PDQ, PDQ, "stopncii", ("ncii",)),  # a member blocked it
            (HashKind.PDQ, PDQ2, "stopncii", ("investigation_seed",)),  # submitted, nobody reviewed it yet
            (HashKind.MD5, MD5, "stopncii", ("disputed",)),  # a member did not block it
        ]
    )
    assert [(path, q.get("nextPageToken"), key) for path, q, key in _StopNCII.seen] == [
        ("/FetchHashes", None, "fetch-key"),
        ("/FetchHashes", ["1"], "fetch-key"),
    ]


def test_fetch_without_credentials_or_from_an_unknown_exchange_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TX_NCMEC_CREDENTIALS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.tx_ncmec_credentials either
    result = _run("fetch", "--exchange", "ncmec", "--list", str(tmp_path / "l.txt"))
    assert result.exit_code == 2 and "TX_NCMEC_CREDENTIALS" in result.output
    other = _run("fetch", "--exchange", "gifct", "--list", str(tmp_path / "l.txt"))
    assert other.exit_code == 2 and "unknown exchange 'gifct'" in other.output
    assert not (tmp_path / "l.txt").exists()


def test_read_list_file_detects_plain_lines_old_and_new(tmp_path: Path) -> None:
    given = tmp_path / "old.txt"
    given.write_text(f"# a list made before\nsha256:{SHA}  # one\npdq {PDQ} tags=x\n")
    imported = read_list_file(given)
    assert [(e.kind, e.source, e.tags, e.label) for e in imported.entries] == [
        (HashKind.SHA256, "old.txt:2", (), "one"),
        (HashKind.PDQ, "old.txt:3", ("x",), ""),
    ]
