"""`make run` (python -m stack run), smoke-tested as a user would use it: it starts, a request
through each proxy port shows up in TimescaleDB and in the lake, and Ctrl-C leaves no process
behind."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import boto3
import botocore.exceptions
import psycopg
import pytest
import requests

from capture.topics import partitions
from stack import free_ports
from stack.service import port_open
from stack.support import REPO_ROOT, wait_until
from tests.run.replay_checks import check_replay_and_export

pytestmark = pytest.mark.integration


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode().partition("=")[::2] for item in raw.split(b"\0") if item)


def command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def read_env(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        values[name] = shlex.split(value)[0] if value else ""
    return values


def test_make_run_end_to_end_and_ctrl_c_leaves_nothing(tmp_path):
    names = ["KAFKA", "POSTGRES", "S3", "APP_A", "APP_B", "PROXY_A", "PROXY_B",
             "PROXY_METRICS", "TIMESCALE_METRICS", "LAKE_METRICS"]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    # Not the default partition count, so that a topic made any other way shows.
    env = {**os.environ, "RUN_DIR": str(tmp_path / "run"), "CAPTURE_TOPIC_PARTITIONS": "4",
           **{f"RUN_{name}_PORT": str(port) for name, port in ports.items()}}
    for leftover in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "S3_ENDPOINT_URL"):
        env.pop(leftover, None)
    # A shell that holds an admin's keys and the owner's URL (`source .run/env` of a run):
    # none of it may reach a process the run starts.
    env |= {"AWS_ACCESS_KEY_ID": "poison-key-id", "AWS_SECRET_ACCESS_KEY": "poison-secret",
            "S3_SECRET_ACCESS_KEY": "poison-s3-secret",
            "DATABASE_URL": "postgresql://owner:poison-password@127.0.0.1:1/tapline"}
    log = (tmp_path / "run.log").open("wb")
    run = subprocess.Popen([sys.executable, "-m", "stack", "run"], cwd=REPO_ROOT, env=env,
                           stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: run.poll() is not None or "Ctrl-C stops everything" in
                   (tmp_path / "run.log").read_text(), timeout=240, interval=0.5,
                   what="make run to be ready")
        assert run.poll() is None, (tmp_path / "run.log").read_text()
        settings = read_env(tmp_path / "run" / "env")
        assert stat.S_IMODE((tmp_path / "run" / "env").stat().st_mode) == 0o600
        for name in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "PGHOST", "PGPORT", "PGUSER",
                     "PGDATABASE", "S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID"):
            assert settings[name], name

        a = requests.get(f"http://127.0.0.1:{ports['PROXY_A']}/hello", timeout=10)
        b = requests.post(f"http://127.0.0.1:{ports['PROXY_B']}/auth",
                          data={"token": "mytoken"}, timeout=10)
        assert (a.status_code, a.text, b.status_code, b.text) == (
            200, "Hello there", 200, "density")

        def rows():
            with psycopg.connect(settings["DATABASE_URL"]) as conn:
                return conn.execute(
                    "SELECT app, path, status_code FROM http_requests ORDER BY app").fetchall()

        assert wait_until(rows, timeout=30, what="rows") == [
            ("app_a", "/hello", 200), ("app_b", "/auth", 200)]

        # The sinks start before the proxy and wait for it to make the topic (the proxy makes
        # it once it reaches Kafka, which the rows above prove): it has the proxy's partition
        # count, not the broker's default of one.
        logs = tmp_path / "run" / "logs"
        for sink in ("sink-timescale", "sink-lake"):
            assert "waiting for the proxy to create it" in (logs / f"{sink}.log").read_text()
        assert asyncio.run(partitions(settings["KAFKA_BOOTSTRAP_SERVERS"],
                                      settings["CAPTURE_TOPIC"])) == [0, 1, 2, 3]

        s3 = boto3.client("s3", endpoint_url=settings["S3_ENDPOINT_URL"],
                          aws_access_key_id=settings["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=settings["AWS_SECRET_ACCESS_KEY"],
                          region_name="us-east-1")

        def objects():
            listing = s3.list_objects_v2(Bucket=settings["S3_BUCKET"])
            return [o["Key"] for o in listing.get("Contents", [])]

        keys = wait_until(objects, timeout=30, what="objects in the lake")
        assert all(key.split("/")[2] == "127.0.0.1" for key in keys), keys

        # Least privilege: the schema is the owner's, the sink writes as tapline_sink, and only
        # the sinks hold credentials.
        with psycopg.connect(settings["DATABASE_URL"]) as conn:
            owner = conn.execute("SELECT tableowner FROM pg_tables "
                                 "WHERE tablename = 'http_requests'").fetchone()
            sessions = {name for (name,) in conn.execute(
                "SELECT usename FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()")}
        assert (owner, sessions) == ((settings["PGUSER"],), {"tapline_sink"})
        children = descendants(run.pid)
        programs = {pid: command_line(pid) for pid in children}
        for pid, command in programs.items():
            env = environ(pid)
            leaked = {k for k, v in env.items() if "poison" in v}
            assert not leaked, f"{command}: {leaked}"
            if "-m sinks timescale" in command:
                assert env["DATABASE_URL"].startswith("postgresql://tapline_sink@"), env
                assert env["TIMESCALE_MIGRATE"] == "false"
            elif "-m sinks lake" in command:
                lake_keys = (env["S3_ACCESS_KEY_ID"], env["S3_SECRET_ACCESS_KEY"])
            elif "-m proxy" in command or "gunicorn" in command:
                held = {k for k in env if k == "DATABASE_URL" or k.startswith(("S3_", "AWS_"))}
                assert not held, f"{command}: {held}"
        assert sum("-m sinks timescale" in command for command in programs.values()) == 1
        assert sum("-m proxy" in command or "gunicorn" in command
                   for command in programs.values()) >= 3
        # moto enforces IAM: the lake sink's keys, which wrote every object, may not list them.
        assert lake_keys[0] != settings["AWS_ACCESS_KEY_ID"]
        as_sink = boto3.client("s3", endpoint_url=settings["S3_ENDPOINT_URL"],
                               aws_access_key_id=lake_keys[0], aws_secret_access_key=lake_keys[1],
                               region_name="us-east-1")
        with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
            as_sink.list_objects_v2(Bucket=settings["S3_BUCKET"])
        assert len(children) >= 8  # kafka, postgres, s3, 2 sinks, 2 apps, proxy (and workers)
        check_replay_and_export(settings, ports, tmp_path)
    finally:
        run.send_signal(signal.SIGINT)  # what Ctrl-C sends
        code = run.wait(120)
        log.close()
    assert code == 0, (tmp_path / "run.log").read_text()
    time.sleep(0.5)
    left = [pid for pid in children if alive(pid)]
    assert left == [], f"left running: {left}"
    # PostgreSQL's server detaches from pg_ctl, so also: nothing listens on the run's ports.
    listening = [name for name, port in ports.items() if port_open("127.0.0.1", port)]
    assert listening == [], f"still listening: {listening}"
