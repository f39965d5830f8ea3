"""The lake sink's pure parts: settings, keys (hostile client IPs), grouping and naming, gzip
NDJSON, a replay of random crash schedules and of a stalled writer whose PUTs land late, which
must end with every record in the lake and read once by its id. No service is needed: the S3
side is a dict."""

from __future__ import annotations

import asyncio
import gzip
import posixpath
import random
import re

import orjson
import pytest
from aiokafka.structs import ConsumerRecord

from capture import InvalidRecord
from capture.lake_layout import UNKNOWN_IP, ip_segment, key_prefix, object_key
from capture.settings import SettingsError
from sinks.lake import (
    BucketMissing,
    LakeSettings,
    LakeSink,
    ObjectsNotWritten,
    ndjson_gz,
    plan_objects,
)
from sinks.loop import Item
from stack import factories

HOSTILE_IPS = [
    "../../x", "a/b", "%2e%2e", "fe80::1%eth0/../x", "", " ", ".", "..", "/", "\\..\\x",
    "x" * 100_000, "127.0.0.1\x00", "127.0.0.1\x00/../../etc", "\uff11\uff12\uff17.0.0.1",
    "127.0.0.1/24",
    "127.0.0.1:80", "[::1]", "::1/128", "fe80::1%", "fe80::1%/", "fe80::1%eth0%eth1", "ü",
    "\u202e1.0.0.127", "1.2.3.4\n", "%00", "0x7f.0.0.1", "2130706433", "localhost",
    "127.0.0.1 ../", "..%2f..%2f", "?x=1", "#frag", "*", "**/*",
]
KEY = re.compile(
    r"\d{4}-\d{2}-\d{2}/\d{2}/(?:[0-9a-f.:]+|unknown)/[A-Za-z0-9._-]+-\d+-\d+-\d+\.jsonl\.gz")


def message(value: bytes | None, offset: int = 0, partition: int = 0,
            topic: str = "http-captures") -> ConsumerRecord:
    size = len(value or b"")
    return ConsumerRecord(topic, partition, offset, 0, 0, None, value, None, 0, size, [])


def record_bytes(**fields) -> bytes:
    obj = orjson.loads(factories.encoded(1)[0][1])
    return orjson.dumps(obj | fields)


SINK = LakeSink(LakeSettings.from_env({}))


def item(value: bytes, offset: int, partition: int = 0) -> Item:
    msg = message(value, offset, partition)
    return Item(msg, SINK.prepare(msg))


# --- settings --------------------------------------------------------------------------------


def test_settings_defaults_suit_a_local_s3():
    s = LakeSettings.from_env({})
    assert (s.endpoint_url, s.bucket, s.region, s.access_key_id, s.secret_access_key,
            s.gzip_level, s.timeout_s) == ("http://127.0.0.1:9000", "captures", "us-east-1",
                                           "tapline", "tapline-secret", 6, 30.0)
    assert "tapline-secret" not in repr(s)


def test_settings_empty_endpoint_means_aws_and_its_credential_chain():
    s = LakeSettings.from_env({"S3_ENDPOINT_URL": ""})
    assert (s.endpoint_url, s.access_key_id, s.secret_access_key) == (None, None, None)
    s = LakeSettings.from_env({"S3_ACCESS_KEY_ID": "", "S3_SECRET_ACCESS_KEY": ""})
    assert (s.endpoint_url, s.access_key_id) == ("http://127.0.0.1:9000", None)
    s = LakeSettings.from_env({"S3_ENDPOINT_URL": "", "S3_ACCESS_KEY_ID": "AK",
                               "S3_SECRET_ACCESS_KEY": "SK", "S3_REGION": "eu-west-3"})
    assert (s.access_key_id, s.secret_access_key, s.region) == ("AK", "SK", "eu-west-3")


@pytest.mark.parametrize(("env", "says"), [
    ({"LAKE_GZIP_LEVEL": "0"}, "LAKE_GZIP_LEVEL=0 is below"),
    ({"LAKE_GZIP_LEVEL": "10"}, "LAKE_GZIP_LEVEL=10 is above"),
    ({"LAKE_GZIP_LEVEL": "fast"}, "not a whole number"),
    ({"S3_ENDPOINT_URL": "127.0.0.1:9000"}, "use http://host:port"),
    ({"S3_BUCKET": "Captures_1"}, "not a valid bucket name"),
    ({"S3_ACCESS_KEY_ID": "AK", "S3_SECRET_ACCESS_KEY": ""}, "set both"),
    ({"S3_TIMEOUT_S": "0"}, "S3_TIMEOUT_S=0 must be above 0"),
    ({"S3_TIMEOUT_S": "soon"}, "S3_TIMEOUT_S='soon' is not a number"),
])
def test_settings_errors_name_the_variable(env, says):
    with pytest.raises(SettingsError, match=says):
        LakeSettings.from_env(env)


# --- keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "segment"), [
    ("127.0.0.1", "127.0.0.1"),
    (" 10.1.2.3 ", "10.1.2.3"),
    ("::1", "::1"),
    ("::", "::"),
    ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
    ("::ffff:192.0.2.7", "192.0.2.7"),  # IPv4-mapped: one spelling per client
    ("FE80::1%eth0", "fe80::1"),  # the scope id is dropped
])
def test_ip_segment_is_the_canonical_address(text, segment):
    assert ip_segment(text) == segment


@pytest.mark.parametrize("text", HOSTILE_IPS, ids=lambda t: repr(t[:20]))
def test_hostile_client_ips_stay_inside_the_prefix(text):
    segment = ip_segment(text)
    assert re.fullmatch(r"[0-9a-f.:]+|unknown", segment)
    key = object_key(key_prefix("2026-11-28T10:39:36.872260Z", text), "http-captures", 2, 17, 20)
    assert KEY.fullmatch(key), key
    assert key.startswith("2026-11-28/10/")
    assert posixpath.normpath(key) == key
    assert not {".", ".."} & set(key.split("/"))


def test_random_garbage_never_escapes_the_prefix():
    rng = random.Random(4)
    alphabet = "./%\\:0123456789abcdefABCDEF\x00 \n\u2215\u2044\uff0e\uff0fxe"
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 45)))
        key = object_key(key_prefix("2026-01-02T03:04:05Z", text), "t", 0, 0, 0)
        assert KEY.fullmatch(key), (text, key)


def test_date_and_hour_are_utc():
    assert key_prefix("2026-11-28T23:30:00.000001-02:00", "1.2.3.4") == "2026-11-29/01/1.2.3.4"
    assert key_prefix("2026-11-28T00:59:59+01:00", "1.2.3.4") == "2026-11-27/23/1.2.3.4"
    assert key_prefix("0999-01-01T00:00:00Z", "::1") == "0999-01-01/00/::1"


@pytest.mark.parametrize("started_at", [
    "yesterday", "2026-11-28T10:00:00", "0001-01-01T00:00:00+01:00", "9999-12-31T23:30:00-01:00",
])
def test_a_time_without_a_utc_date_is_invalid(started_at):
    with pytest.raises(InvalidRecord):
        key_prefix(started_at, "1.2.3.4")


@pytest.mark.parametrize("topic", ["", ".", "..", "a/b", "../x", "t\x00", "ü", "x" * 250])
def test_object_key_refuses_what_kafka_would_not_call_a_topic(topic):
    with pytest.raises(ValueError, match="topic"):
        object_key("2026-11-28/10/1.2.3.4", topic, 0, 0, 0)


# --- prepare ---------------------------------------------------------------------------------


def test_prepare_keeps_the_bytes_and_drops_the_record():
    value = factories.encoded(1)[0][1]
    prefix, raw = SINK.prepare(message(value))
    assert raw is value
    record = factories.make(0)
    assert prefix == key_prefix(record.started_at, record.client_ip)


def test_prepare_puts_a_hostile_ip_under_unknown():
    prefix, _ = SINK.prepare(message(record_bytes(client_ip="../../etc/passwd")))
    assert prefix.endswith("/unknown")


@pytest.mark.parametrize(("value", "reason"), [
    (None, "empty message"),
    (b"", "empty message"),
    (b"not json", "not JSON"),
    (record_bytes(v=3), "unknown schema version 3"),
    (record_bytes(started_at="yesterday"), "not an ISO 8601 time"),
    (record_bytes(started_at="0001-01-01T00:00:00+01:00"), "no UTC date"),
    (orjson.dumps(orjson.loads(record_bytes()), option=orjson.OPT_INDENT_2), "line break"),
    (record_bytes() + b"\n", "line break"),
    (b"\r" + record_bytes(), "line break"),
])
def test_prepare_refuses_poison(value, reason):
    with pytest.raises(InvalidRecord, match=reason):
        SINK.prepare(message(value))


# --- grouping, naming, encoding --------------------------------------------------------------


def test_a_batch_becomes_one_object_per_partition_date_hour_and_ip():
    a1 = record_bytes(client_ip="10.0.0.1", started_at="2026-11-28T10:00:00Z")
    a2 = record_bytes(client_ip="10.0.0.1", started_at="2026-11-28T10:59:59Z")
    b = record_bytes(client_ip="10.0.0.2", started_at="2026-11-28T10:00:00Z")
    late = record_bytes(client_ip="10.0.0.1", started_at="2026-11-28T11:00:00Z")
    items = [item(b, 40), item(a1, 41), item(late, 42), item(a2, 43), item(a1, 7, partition=1)]
    planned = {o.key: o.lines for o in plan_objects(items)}
    assert planned == {
        "2026-11-28/10/10.0.0.2/http-captures-0-40-40.jsonl.gz": [b],
        "2026-11-28/10/10.0.0.1/http-captures-0-41-43.jsonl.gz": [a1, a2],
        "2026-11-28/11/10.0.0.1/http-captures-0-42-42.jsonl.gz": [late],
        "2026-11-28/10/10.0.0.1/http-captures-1-7-7.jsonl.gz": [a1],
    }


def test_an_object_key_needs_a_range_of_offsets():
    with pytest.raises(ValueError, match="not a range"):
        object_key("2026-11-28/10/1.2.3.4", "t", 0, 8, 7)


def test_ndjson_gz_is_one_original_line_per_record_and_deterministic():
    lines = [value for _k, value in factories.encoded(50)]
    body = ndjson_gz(lines, 6)
    assert gzip.decompress(body).split(b"\n") == [*lines, b""]
    assert ndjson_gz(lines, 6) == body  # no time in the header: a rewrite is identical
    assert gzip.decompress(ndjson_gz(lines, 1)) == gzip.decompress(body)
    assert len(body) < sum(map(len, lines)) / 5


# --- every record, read once, across crashes and stalled writers ---------------------------


def partition_log(rng: random.Random, n: int, poison: float = 0.03) -> list[Item]:
    """One partition of `n` records from 4 clients over 3 hours; some poison (prepared None)."""
    log = []
    for offset in range(n):
        value = record_bytes(id=f"r{offset}", client_ip=f"10.0.0.{rng.randint(1, 4)}",
                             started_at=f"2026-11-28T{rng.randint(10, 12)}:00:00Z")
        msg = message(value, offset)
        log.append(Item(msg, SINK.prepare(msg)) if rng.random() > poison else Item(msg, None))
    return log


def batch(log: list[Item], start: int, end: int) -> list[Item]:
    return [i for i in log[start:end] if i.prepared is not None]  # poison: DLQ


def put(store: dict[str, list[bytes]], objects) -> None:
    for lake_object in objects:
        store[lake_object.key] = list(lake_object.lines)


def read_once(store: dict[str, list[bytes]]) -> list[str]:
    """The ids a reader counts: each capture once, as the DuckDB view `captures` does."""
    return sorted({orjson.loads(line)["id"] for lines in store.values() for line in lines})


def wanted(log: list[Item]) -> list[str]:
    return sorted(orjson.loads(i.message.value)["id"] for i in log if i.prepared is not None)


def check_objects(store: dict[str, list[bytes]]) -> None:
    """Each object: its group's records, in offset order, from the first offset its name
    says to the last."""
    for key, lines in store.items():
        assert all(key.startswith(key_prefix(orjson.loads(line)["started_at"],
                                             orjson.loads(line)["client_ip"]) + "/")
                   for line in lines)
        offsets = [int(orjson.loads(line)["id"][1:]) for line in lines]
        assert offsets == sorted(offsets)
        assert key.endswith(f"-0-{offsets[0]}-{offsets[-1]}.jsonl.gz"), key


def replay(log: list[Item], rng: random.Random, store: dict[str, list[bytes]]) -> int:
    """Consume `log` (one partition) like the loop does, crashing at random: a batch starts
    at the committed offset, is cut anywhere, may be written only in part (a crash in the
    middle of its PUTs) and may never be committed. Returns the number of crashes."""
    committed, crashes = 0, 0
    while committed < len(log):
        end = min(len(log), committed + rng.randint(1, 40))
        objects = plan_objects(batch(log, committed, end))
        rng.shuffle(objects)  # PUTs finish in any order
        if rng.random() < 0.35 or not crashes:  # crash: some PUTs done, no commit
            crashes += 1
            put(store, objects[:rng.randint(0, len(objects))])
            continue
        put(store, objects)
        committed = end
    return crashes


@pytest.mark.parametrize("seed", range(40))
def test_any_crash_schedule_keeps_every_record_and_reads_it_once(seed):
    rng = random.Random(seed)
    log = partition_log(rng, rng.randint(50, 400))
    store: dict[str, list[bytes]] = {}
    assert replay(log, rng, store) > 0
    assert read_once(store) == wanted(log)
    check_objects(store)


def stalled_writer(log: list[Item], rng: random.Random, store: dict[str, list[bytes]],
                   naming) -> None:
    """Two sinks of one group on one partition. Sink A cuts a batch from the last commit and
    sends its PUTs; they hang. The group gives the partition to sink B, which reads from the
    same commit, cuts its batches otherwise (longer) and writes and commits to the end. Then
    A's PUTs land: whatever A checks, these were in flight already. `naming` maps planned
    objects to the keys they are PUT under."""
    committed = 0
    while committed < len(log):  # A at work, until its PUTs hang
        end = min(len(log), committed + rng.randint(20, 60))
        if rng.random() < 0.3:
            break
        put(store, naming(plan_objects(batch(log, committed, end))))
        committed = end
    in_flight = naming(plan_objects(batch(log, committed, end)))
    while committed < len(log):  # B, from the last commit
        end = min(len(log), committed + rng.randint(60, 400))
        put(store, naming(plan_objects(batch(log, committed, end))))
        committed = end
    put(store, in_flight)  # A's late PUTs land


def first_offset_names(objects):
    """The names before: `<topic>-<partition>-<first offset>`, dropping the last offset."""
    for lake_object in objects:
        head, _, tail = lake_object.key.rpartition("-")
        lake_object.key = head + tail[tail.index("."):]
    return objects


def test_a_stalled_writer_lost_records_when_names_held_the_first_offset_only():
    # The simulation of issue 16: with the old names, A's late, shorter objects replace B's.
    rng = random.Random(16)
    log = partition_log(rng, 5000, poison=0.0)
    store: dict[str, list[bytes]] = {}
    stalled_writer(log, rng, store, first_offset_names)
    assert len(read_once(store)) < 5000


@pytest.mark.parametrize("seed", range(40))
def test_a_stalled_writer_cannot_replace_what_another_committed(seed):
    rng = random.Random(seed)
    log = partition_log(rng, rng.randint(200, 2000))
    store: dict[str, list[bytes]] = {}
    stalled_writer(log, rng, store, lambda objects: objects)
    assert read_once(store) == wanted(log)
    check_objects(store)


def test_a_name_always_holds_the_same_lines_whatever_the_cut():
    rng = random.Random(7)
    log = partition_log(rng, 600)
    seen: dict[str, list[bytes]] = {}
    for _ in range(2000):
        start = rng.randrange(len(log))
        for lake_object in plan_objects(batch(log, start, start + rng.randint(1, 200))):
            assert seen.setdefault(lake_object.key, lake_object.lines) == lake_object.lines


# --- write, with a fake S3 -------------------------------------------------------------------


class FakeS3:
    def __init__(self, fail: dict[str, Exception] | None = None) -> None:
        self.objects: dict[str, bytes] = {}
        self.fail = fail or {}
        self.in_flight = 0
        self.most_in_flight = 0

    async def _pipe_file(self, path: str, data: bytes) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.001)
        self.in_flight -= 1
        for part, error in self.fail.items():
            if part in path:
                raise error
        self.objects[path] = data


def sink_with(fake: FakeS3) -> LakeSink:
    sink = LakeSink(LakeSettings.from_env({"S3_BUCKET": "lake"}))
    sink._fs = fake
    return sink


async def test_write_puts_every_object_concurrently():
    fake = FakeS3()
    items = [item(v, i) for i, (_k, v) in enumerate(factories.encoded(400, clients=40))]
    await sink_with(fake).write(items)
    expected = {f"lake/{o.key}": o.lines for o in plan_objects(items)}
    assert set(fake.objects) == set(expected)
    for path, body in fake.objects.items():
        assert gzip.decompress(body) == b"".join(line + b"\n" for line in expected[path])
    assert 1 < fake.most_in_flight <= 16


async def test_a_failed_put_fails_the_batch_after_the_others_finish():
    fake = FakeS3({"10.0.5.": ConnectionResetError("reset by peer")})
    items = [item(v, i) for i, (_k, v) in enumerate(factories.encoded(400, clients=40))]
    with pytest.raises(ObjectsNotWritten, match=r"\d+ of \d+ objects not written.*reset"):
        await sink_with(fake).write(items)
    assert fake.objects  # the others were written; the retry rewrites them identically
    assert not any("10.0.5." in path for path in fake.objects)


async def test_a_missing_bucket_says_what_to_do():
    fake = FakeS3({"": FileNotFoundError("The specified bucket does not exist")})
    with pytest.raises(BucketMissing, match=r"bucket 'lake' does not exist.*aws s3 mb s3://lake"):
        await sink_with(fake).write([item(record_bytes(), 0)])


def test_unknown_ip_is_a_word_no_address_can_spell():
    assert ip_segment(UNKNOWN_IP) == UNKNOWN_IP
    assert not re.fullmatch(r"[0-9a-f.:]+", UNKNOWN_IP)
