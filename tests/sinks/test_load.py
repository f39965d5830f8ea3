"""`tapline load` through the proxy: its tally equals what the report and the lake find, for
every status code and every client."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from datetime import timedelta

import orjson
import psycopg
import pytest

from capture import decode
from stack.support import fresh_database, sample, wait_until
from tapline.load import run_load
from tapline.report import build_report
from tests.integration.conftest import start_pipeline
from tests.sinks.conftest import SinkProcess, count_rows
from tests.sinks.lake_fixtures import (  # noqa: F401 - fixtures s3 and bucket
    fresh_bucket,
    lake_env,
    read_lake,
    s3_service,
)
from tests.sinks.test_timescale import sink_env

pytestmark = pytest.mark.integration


def test_tally_equals_what_the_report_and_the_lake_find(kafka, postgres, s3, bucket, tmp_path):
    database = fresh_database(postgres.dsn)
    # The load generator's peer is trusted, so each simulated client keeps its own IP.
    with start_pipeline(tmp_path, kafka.bootstrap_servers,
                        PROXY_TRUSTED_PROXIES="127.0.0.1/32") as pipeline:
        timescale = SinkProcess("timescale", tmp_path, sink_env(
            kafka.bootstrap_servers, pipeline.topic, database)).start()
        lake = SinkProcess("lake", tmp_path, lake_env(
            kafka.bootstrap_servers, pipeline.topic, s3.endpoint_url, bucket,
            SINK_BATCH_MAX_AGE_MS="300")).start()
        try:
            tally = run_load(pipeline.app_a, pipeline.app_b, rate=60, duration_s=4,
                             clients=6, concurrency=4, seed=7)
            assert tally.failures == 0 and tally.sent == 240
            # app_a asks app_b for every /jobs call that carries a token
            stored = count_rows
            wait_until(lambda: stored(database, "client_ip <> '127.0.0.1'") == tally.sent,
                       timeout=60, what="the generated requests in TimescaleDB")
            total = stored(database)
            wait_until(lambda: sample(lake.metrics(), "tapline_sink_written_total",
                                      sink="lake") >= total, timeout=60, what="the lake")
        finally:
            lake.stop()
            timescale.stop()

    # The report, per status code and per client, on the generator's clients only.
    sections = {s.title: s.as_dicts() for s in build_report(database, timedelta(hours=1))}
    clients = {r["client"]: r["requests"] for r in sections["Top clients"]}
    for client, sent in tally.by_client.items():
        assert clients[client] == sent
    with psycopg.connect(database) as conn:
        by_status = Counter(dict(conn.execute(
            "SELECT status_code, count(*) FROM http_requests WHERE client_ip <> '127.0.0.1' "
            "GROUP BY status_code").fetchall()))
    assert by_status == tally.by_status

    # The lake holds the same requests, under each client's own IP.
    records = [decode(line) for line in read_lake(s3.endpoint_url, bucket).lines]
    outside = [r for r in records if r.client_ip != "127.0.0.1"]
    assert Counter(r.client_ip for r in outside) == tally.by_client
    assert Counter(r.response.status_code for r in outside) == tally.by_status
    assert all(key.split("/")[2] == decode(lines[0]).client_ip
               for key, lines in read_lake(s3.endpoint_url, bucket).objects.items())


def test_load_command_prints_its_tally(kafka, tmp_path):
    with start_pipeline(tmp_path, kafka.bootstrap_servers) as pipeline:
        result = subprocess.run(
            [sys.executable, "-m", "tapline.cli", "load", "--app-a", pipeline.app_a,
             "--app-b", pipeline.app_b, "--rate", "40", "--duration", "2s", "--json"],
            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    tally = orjson.loads(result.stdout)
    assert tally["sent"] == 80 and tally["no_answer"] == 0
    assert sum(tally["by_status"].values()) == 80
    bad = subprocess.run([sys.executable, "-m", "tapline.cli", "load", "--duration", "soon"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "bad duration 'soon'" in bad.stderr
