"""Both sinks with the least their stores let them do, on real Kafka, PostgreSQL and S3.

- The TimescaleDB sink logs in as a member of tapline_writer and does not migrate: its rows
  land, and the same login may not delete, update, alter or drop anything, nor read other
  tables. On a database not yet migrated it waits, saying what to run, and goes on once the
  owner has migrated.
- The lake sink holds keys whose only right is s3:PutObject on the bucket's objects, on a moto
  server that enforces IAM (moto checks signatures and policies once its no-auth allowance is
  used up: /moto-api/reset-auth sets it to 0 after the setup). Its objects land; the same keys
  may not read, list, delete or write anywhere else.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
import urllib.request
import uuid

import boto3
import botocore.exceptions
import psycopg
import pytest
from sqlalchemy.engine import make_url

import db
from stack import S3Server, factories
from stack.support import REPO_ROOT, produce, wait_until
from tests.sinks.conftest import SinkProcess, count_rows
from tests.sinks.lake_fixtures import Lake, check_lake, lake_env

pytestmark = pytest.mark.integration

REFUSED_TO_WRITER = [
    "DELETE FROM http_requests",
    "UPDATE http_requests SET status_code = 200",
    "TRUNCATE http_requests",
    "DROP TABLE http_requests",
    "ALTER TABLE http_requests DROP COLUMN request_body",
    "CREATE TABLE http_requests_copy (LIKE http_requests)",
    "SELECT count(*) FROM owners_only",
]


def login_url(url: str, name: str, password: str | None = None) -> str:
    return make_url(url).set(username=name, password=password).render_as_string(
        hide_password=False)


def timescale_env(bootstrap: str, topic: str, url: str, **extra: str) -> dict[str, str]:
    return {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "CAPTURE_TOPIC": topic,
            "DATABASE_URL": url, "TIMESCALE_MIGRATE": "false",
            "SINK_GROUP_ID": f"g-{uuid.uuid4().hex[:8]}", "SINK_RETRY_MAX_BACKOFF_S": "1",
            **extra}


def sessions(url: str) -> set[str]:
    """The roles of the other sessions on the database of `url`."""
    with psycopg.connect(url) as conn:
        return {name for (name,) in conn.execute(
            "SELECT usename FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()")}


def test_the_timescale_sink_writes_as_a_writer_that_may_do_nothing_else(kafka, database,
                                                                         tmp_path):
    n = 300
    topic = f"lp-ts-{uuid.uuid4().hex[:8]}"
    produce(kafka.bootstrap_servers, topic, factories.encoded(n))
    assert db.migrate(database) == db.POSTGRESQL  # as the owner, before the sink starts
    with psycopg.connect(database) as conn:
        conn.execute("CREATE TABLE owners_only (secret text)")
        conn.execute("INSERT INTO owners_only VALUES ('not for the sink')")
    login = f"sink_{uuid.uuid4().hex[:8]}"
    db.create_login(login, "writer", None, database)
    writer = login_url(database, login)

    sink = SinkProcess("timescale", tmp_path,
                       timescale_env(kafka.bootstrap_servers, topic, writer)).start()
    try:
        wait_until(lambda: count_rows(database) >= n, timeout=60, what=f"{n} rows")
        assert login in sessions(database)
    finally:
        assert sink.stop() == 0
    assert count_rows(database) == n
    log = sink.log.read_text()
    assert "schema is at head, mode postgresql" in log
    assert "Running upgrade" not in log  # it checked; it did not migrate

    with psycopg.connect(writer) as conn:
        allowed = []
        for sql in REFUSED_TO_WRITER:
            try:
                with conn.transaction():
                    conn.execute(sql)
                allowed.append(sql)
            except psycopg.errors.InsufficientPrivilege:
                pass
    assert allowed == []
    assert count_rows(database) == n


def test_the_timescale_sink_waits_for_the_owner_to_migrate(kafka, database, tmp_path):
    n = 50
    topic = f"lp-wait-{uuid.uuid4().hex[:8]}"
    produce(kafka.bootstrap_servers, topic, factories.encoded(n))
    login = f"sink_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {login} LOGIN")  # in no group yet: the schema is not there
    writer = login_url(database, login)
    line = (f"could not start the sink (database {writer} is not migrated to revision "
            f"{db.head_revision()} (it is at none): run `python -m db upgrade` as the schema's "
            "owner (`make migrate`, or docker compose's migrate service))")

    sink = SinkProcess("timescale", tmp_path,
                       timescale_env(kafka.bootstrap_servers, topic, writer)).start()
    try:
        wait_until(lambda: line in sink.log.read_text(), timeout=30, what="the sink to say why")
        assert sink.proc.poll() is None  # waiting, not gone
        assert count_rows(database) == 0
        db.migrate(database)
        db.create_login(login, "writer", None, database)
        wait_until(lambda: count_rows(database) >= n, timeout=60, what=f"{n} rows")
    finally:
        assert sink.stop() == 0
    assert count_rows(database) == n
    with psycopg.connect(database) as conn:  # the owner's schema, not the sink's
        assert conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'http_requests'"
                            ).fetchone() == (make_url(database).username,)


def test_policies_with_a_sink_that_may_not_migrate_are_refused_in_one_line():
    env = {"PATH": "/usr/bin:/bin", "TIMESCALE_MIGRATE": "false",
           "TIMESCALE_RETENTION": "30 days"}
    done = subprocess.run([sys.executable, "-m", "sinks", "timescale"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "tapline sink: TIMESCALE_COMPRESS_AFTER and TIMESCALE_RETENTION need "
        "TIMESCALE_MIGRATE=true (policies take the schema's owner): with a writer role, apply "
        "them with `python -m db policies` as the owner"]


# --- the lake sink with keys that may only write -----------------------------------------------


def put_only_policy(bucket: str) -> dict:
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{bucket}/*"}]}


class IamS3:
    """A moto server of its own, with IAM users made while it checks nothing, then enforcing."""

    def __init__(self, server: S3Server) -> None:
        self.server = server
        self.url = server.endpoint_url

    def client(self, service: str, key: dict[str, str] | None = None):
        key = key or {"AccessKeyId": "setup", "SecretAccessKey": "setup"}
        return boto3.client(service, endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id=key["AccessKeyId"],
                            aws_secret_access_key=key["SecretAccessKey"])

    def user(self, name: str, policy: dict) -> dict[str, str]:
        iam = self.client("iam")
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName=f"{name}-policy",
                            PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return {"AccessKeyId": key["AccessKeyId"], "SecretAccessKey": key["SecretAccessKey"]}

    def enforce(self) -> None:
        request = urllib.request.Request(f"{self.url}/moto-api/reset-auth", data=b"0",
                                         method="POST", headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert json.load(answer)["status"] == "ok"


@pytest.fixture
def iam_s3(tmp_path):
    with S3Server(tmp_path / "s3", bucket=None) as server:
        yield IamS3(server)


def denied(call) -> str | None:
    """The error code S3 answered `call` with, if it was a refusal (403); None if it went
    through."""
    try:
        call()
    except botocore.exceptions.ClientError as error:
        assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 403, error
        return error.response["Error"]["Code"]
    return None


def test_the_lake_sink_needs_nothing_but_put_object(kafka, iam_s3, tmp_path):
    bucket, other = f"lake-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"
    setup = iam_s3.client("s3")
    for name in (bucket, other):
        setup.create_bucket(Bucket=name)
    sink_key = iam_s3.user("lake-sink", put_only_policy(bucket))
    admin_key = iam_s3.user("admin", {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]})
    iam_s3.enforce()
    admin, as_sink = iam_s3.client("s3", admin_key), iam_s3.client("s3", sink_key)
    # Enforced: keys IAM does not know are turned away.
    assert denied(lambda: iam_s3.client("s3").list_objects_v2(Bucket=bucket)) == (
        "InvalidAccessKeyId")

    n = 400
    topic = f"lp-lake-{uuid.uuid4().hex[:8]}"
    messages = factories.encoded(n, clients=6, spread_s=2 * 3600)
    produce(kafka.bootstrap_servers, topic, messages)
    env = lake_env(kafka.bootstrap_servers, topic, iam_s3.url, bucket,
                   S3_ACCESS_KEY_ID=sink_key["AccessKeyId"],
                   S3_SECRET_ACCESS_KEY=sink_key["SecretAccessKey"],
                   SINK_BATCH_MAX_AGE_MS="200")

    def lines() -> int:
        return sum(len(read(key)) for key in keys())

    def keys() -> list[str]:
        return [o["Key"] for o in admin.list_objects_v2(Bucket=bucket).get("Contents", [])]

    def read(key: str) -> list[bytes]:
        body = gzip.decompress(admin.get_object(Bucket=bucket, Key=key)["Body"].read())
        return body.rstrip(b"\n").split(b"\n")

    sink = SinkProcess("lake", tmp_path, env).start()
    try:
        wait_until(lambda: lines() >= n, timeout=60, what=f"{n} records in the lake")
    finally:
        assert sink.stop() == 0
    lake = Lake({key: read(key) for key in keys()})
    check_lake(lake, topic, [value for _key, value in messages])
    assert f"these credentials may not check bucket '{bucket}'" in sink.log.read_text()

    some = keys()[0]
    refusals = {
        "read": denied(lambda: as_sink.get_object(Bucket=bucket, Key=some)),
        "head": denied(lambda: as_sink.head_object(Bucket=bucket, Key=some)),
        "list": denied(lambda: as_sink.list_objects_v2(Bucket=bucket)),
        "delete": denied(lambda: as_sink.delete_object(Bucket=bucket, Key=some)),
        "write elsewhere": denied(lambda: as_sink.put_object(Bucket=other, Key="x", Body=b"x")),
        "make a bucket": denied(lambda: as_sink.create_bucket(Bucket=f"new-{bucket}")),
        "delete the bucket": denied(lambda: as_sink.delete_bucket(Bucket=bucket)),
        "list buckets": denied(lambda: as_sink.list_buckets()),
    }
    assert {what: code for what, code in refusals.items() if code is None} == {}
    assert some in keys()  # the refused delete deleted nothing
    # And the one thing it may do, it still may.
    as_sink.put_object(Bucket=bucket, Key=f"probe-{time.time_ns()}", Body=b"x")
