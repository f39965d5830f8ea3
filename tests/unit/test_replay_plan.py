"""`tapline replay`'s plan and summary (tapline/replay.py), pure: which requests are sent as
captured, which are skipped and why, what redaction left unresolved, and how the summary
counts statuses that changed."""

from __future__ import annotations

import orjson
import pytest

from capture import encode
from tapline import cli
from tapline.replay import Options, Outcome, plan, summarize
from tests.unit.test_har import record

OPTIONS = Options(targets={"app_a": "http://t"})


def planned(r, options=OPTIONS):
    result = plan([encode(r)], options)
    return result, (result.items[0] if result.items else None)


def test_a_request_is_sent_as_captured_without_hop_by_hop_headers():
    r = record()
    r.request.headers += [["Connection", "keep-alive, X-Hop"], ["X-Hop", "1"],
                          ["Transfer-Encoding", "chunked"], ["Content-Length", "8"]]
    _, item = planned(r)
    assert item.method == "POST" and item.target == "/jobs?page=2&q=a%20b"
    assert item.body == b"token=t1"
    names = [n for n, _ in item.headers]
    assert names == ["Content-Type", "Cookie", "X-Dup", "X-Dup", "X-Tapline-Replay"]
    assert item.headers[-1] == ("X-Tapline-Replay", r.id)
    assert item.unresolved == ["header Cookie"]  # sid is a fingerprint
    assert (item.original_status, item.endpoint) == (200, "app_a POST /jobs")


def test_redacted_values_are_listed_unless_supplied():
    r = record()
    r.request.headers.append(["Authorization", "hmac:00112233aabbccdd"])
    r.request.body = "password=[redacted]"
    _, item = planned(r)
    assert item.unresolved == ["header Cookie", "header Authorization", "body"]
    options = Options(targets={"app_a": "http://t"},
                      headers=[("Authorization", "mytoken")],
                      mapping={"hmac:0123456789abcdef": "real-session"})
    _, item = planned(r, options)
    assert item.unresolved == ["body"]
    assert ("Authorization", "mytoken") in item.headers
    assert ("Authorization", "hmac:00112233aabbccdd") not in item.headers
    assert ("Cookie", "sid=real-session; theme=dark") in item.headers


def test_withheld_truncated_other_apps_and_replays_are_skipped_and_counted():
    withheld, truncated, other, replayed = record(), record(), record(app="app_b"), record()
    withheld.request.body_withheld = "binary"
    truncated.request.body_truncated = True
    replayed.request.headers.append(["x-tapline-replay", "someid"])
    result = plan([encode(r) for r in (withheld, truncated, other, replayed, record())]
                  + [b"{}"], OPTIONS)
    assert len(result.items) == 1 and result.selected == 6
    assert result.skipped == {"request body withheld by redaction": 1,
                              "request body truncated": 1, "no --target for app_b": 1,
                              "a replay itself (carries the mark header)": 1,
                              "not a valid capture record": 1}
    sending = Options(targets={"app_a": "http://t"}, send_truncated=True, mark=None)
    assert len(plan([encode(r) for r in (withheld, truncated, replayed)], sending).items) == 3


def test_the_summary_counts_changed_statuses_per_endpoint():
    items = plan([encode(record()) for _ in range(4)], OPTIONS)
    outcomes = [Outcome(200, 1.0), Outcome(500, 2.0), Outcome(500, 3.0),
                Outcome(None, 1.0, "connection refused")]
    s = summarize(items, outcomes, 1.0)
    assert (s["sent"], s["answered"], s["status_same"], s["status_changed"]) == (4, 3, 1, 3)
    assert s["changes"] == [
        {"endpoint": "app_a POST /jobs", "original": 200, "replay": 500, "count": 2},
        {"endpoint": "app_a POST /jobs", "original": 200, "replay": "connection refused",
         "count": 1}]
    assert s["errors"] == {"connection refused": 1}
    assert s["latency_ms"]["replay"] == {"p50": 2.0, "p95": 3.0}
    orjson.dumps(s)  # --json can print it


@pytest.mark.parametrize(("argv", "says"), [
    (["replay"], "--target: say where"),
    (["replay", "--target", "app_a"], "--target: use APP=http://HOST:PORT"),
    (["replay", "--target", "a=http://h", "--header", "Authorization secret"],
     "--header: use 'Name: value'"),
    (["replay", "--target", "a=http://h", "--map", "mytoken=secret"], "--map: a fingerprint"),
    (["replay", "--target", "a=http://h", "--rate", "fast"], "--rate 'fast'"),
    (["replay", "--target", "a=http://h", "--from", "yesterday"], "--from 'yesterday'"),
    (["replay", "--target", "a=http://h", "--from", "0", "--date", "2026-11-28"],
     "--from/--to read the Kafka topic"),
    (["export"], "export: say which format"),
    (["export", "--har", "--hour", "24"], "--hour 24"),
])
def test_bad_replay_and_export_options_are_one_line(argv, says, capsys):
    with pytest.raises(SystemExit, match="2"):
        cli.parse(argv)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err and "secret" not in err, err


def test_good_replay_options_are_ready():
    args = cli.parse(["replay", "--target", "app_a=http://127.0.0.1:5100/", "--rate", "max",
                      "--header", "Authorization: mytoken", "--from", "2026-11-28T10:00:00Z"])
    assert args.options.targets == {"app_a": "http://127.0.0.1:5100"}
    assert args.options.rate == float("inf") and args.source == "kafka"
    assert args.options.headers == [("Authorization", "mytoken")]
