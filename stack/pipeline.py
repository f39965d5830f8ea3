"""The whole pipeline as local processes, for `make run`: no Docker.

Kafka from its jars, a PostgreSQL cluster (TimescaleDB where the machine has it), moto's S3
server, both apps, the proxy in front of them and both sinks, each logging to one file under
`RUN_DIR/logs`. Data lives under RUN_DIR and survives a restart, with one exception: moto
keeps objects in memory, so at each start the lake sink's consumer group is rewound to the
oldest record and the lake is written again from the topic (the object names are
deterministic, so it comes back the same). `RUN_RESET=1` starts from nothing.

Least privilege, as in docker-compose.yml: the schema is migrated here, as the cluster's
superuser (the schema's owner), before any sink starts; the TimescaleDB sink then logs in as
`tapline_sink`, a member of tapline_writer (db.roles) that may only insert into and read
http_requests, and does not migrate (TIMESCALE_MIGRATE=false). The cluster trusts loopback
connections (initdb's default), so that login needs no password. moto checks no keys until it
is told to: the run makes two IAM users first, the lake sink's (s3:PutObject on the bucket's
objects, nothing else) and yours (s3:*, in `.run/env`, which is 0600), then has moto
enforce IAM. Each process gets an environment built for it (Program, base_env), never the
shell's: the apps and the proxy hold no database or S3 credentials, whatever the shell that
ran `make run` holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import db
from capture.settings import DEFAULT_TOPIC, EnvReader
from stack.kafka import STACK_DIR, Kafka
from stack.postgres import Postgres
from stack.s3 import S3Server
from stack.service import LOOPBACK, ProcessService, base_env, port_open

REPO = STACK_DIR.parent
LAKE_GROUP = "tapline-lake"
RUN_LAKE_MAX_AGE_MS = "2000"  # the lake sink's batch age under `make run`
S3_KEY_ID, S3_SECRET = "tapline", "tapline-secret"  # moto takes any before IAM is on
WRITER_LOGIN = "tapline_sink"  # the TimescaleDB sink's login role, in tapline_writer
LAKE_USER, ADMIN_USER = "tapline-lake", "tapline-admin"  # the run's IAM users in moto


@dataclass(frozen=True, slots=True)
class RunSettings:
    """Where `make run` puts things. Every port is a setting, for a second run beside a first."""

    run_dir: Path
    reset: bool
    kafka_port: int
    postgres_port: int
    s3_port: int
    app_a_port: int
    app_b_port: int
    proxy_a_port: int
    proxy_b_port: int
    proxy_metrics_port: int
    timescale_metrics_port: int
    lake_metrics_port: int
    topic: str
    bucket: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RunSettings:
        read = EnvReader(os.environ if env is None else env)
        port = read.port
        return cls(
            run_dir=Path(read.text("RUN_DIR", str(REPO / ".run"))).resolve(),
            reset=read.flag("RUN_RESET", False),
            kafka_port=port("RUN_KAFKA_PORT", 9092),
            postgres_port=port("RUN_POSTGRES_PORT", 5432),
            s3_port=port("RUN_S3_PORT", 9000),
            app_a_port=port("RUN_APP_A_PORT", 5100),
            app_b_port=port("RUN_APP_B_PORT", 5101),
            proxy_a_port=port("RUN_PROXY_A_PORT", 5000),
            proxy_b_port=port("RUN_PROXY_B_PORT", 5001),
            proxy_metrics_port=port("RUN_PROXY_METRICS_PORT", 9101),
            timescale_metrics_port=port("RUN_TIMESCALE_METRICS_PORT", 9102),
            lake_metrics_port=port("RUN_LAKE_METRICS_PORT", 9103),
            topic=read.text("CAPTURE_TOPIC", DEFAULT_TOPIC),
            bucket=read.text("S3_BUCKET", "captures"),
        )


class Program(ProcessService):
    """One of the project's own processes: an app, the proxy or a sink.

    Its environment is built, not inherited: `base_env()` (PATH, HOME, the locale...), the
    checkout's code on PYTHONPATH, the shell's variables named by `settings` (prefixes of the
    program's own tuning, e.g. PROXY_ and CAPTURE_ for the proxy), then `env`. Nothing else of
    the shell that ran `make run` reaches it: not its AWS or S3 keys, not its DATABASE_URL.
    """

    stop_timeout_s = 20.0

    def __init__(self, name: str, command: Sequence[str], env: Mapping[str, str],
                 logs: Path, ready_port: int, settings: Sequence[str] = ()) -> None:
        super().__init__(logs, f"{name}.log")
        self.name = name
        self.command = list(command)
        self.env = dict(env)
        self.ready_port = ready_port
        self.settings = tuple(settings)

    def _command(self) -> Sequence[str]:
        return self.command

    def _env(self) -> dict[str, str]:
        return program_env(self.env, self.settings)

    def _is_ready(self) -> bool:
        return port_open(LOOPBACK, self.ready_port)


def program_env(env: Mapping[str, str], settings: Sequence[str],
                parent: Mapping[str, str] | None = None) -> dict[str, str]:
    """A program's whole environment (see Program): the base, PYTHONPATH, the variables of
    `parent` (default: ours) that start with one of `settings`, then `env`."""
    parent = os.environ if parent is None else parent
    # The children run in the logs folder: this checkout's packages, whatever an editable
    # install elsewhere points at.
    chosen = {**base_env(parent), "PYTHONPATH": str(REPO)}
    if settings:
        prefixes = tuple(settings)
        chosen.update((k, v) for k, v in parent.items() if k.startswith(prefixes))
    return {**chosen, **env}


# Which of the shell's variables each kind of program takes: its own settings' names (docs/
# configuration.md). Never DATABASE_URL, S3_* keys or AWS_*: the run sets what a sink needs itself.
_CAPTURE_SETTINGS = ("CAPTURE_", "KAFKA_")
_SINK_SETTINGS = (*_CAPTURE_SETTINGS, "SINK_", "DLQ_TOPIC", "LOG_LEVEL")
PROXY_SETTINGS = (*_CAPTURE_SETTINGS, "PROXY_", "MALLOC_MMAP_THRESHOLD_")
TIMESCALE_SETTINGS = (*_SINK_SETTINGS, "TIMESCALE_")
LAKE_SETTINGS = (*_SINK_SETTINGS, "LAKE_", "S3_TIMEOUT_S")
APP_SETTINGS = ("APP_",)


class Pipeline:
    """Builds every service of a run, starts them in order and stops them in reverse."""

    def __init__(self, settings: RunSettings) -> None:
        self.settings = s = settings
        self.logs = s.run_dir / "logs"
        self.kafka = Kafka(s.run_dir / "kafka", s.kafka_port)
        self.postgres = Postgres(s.run_dir / "postgres", s.postgres_port)
        self.s3 = S3Server(s.run_dir / "s3", s.s3_port, bucket=s.bucket)
        for store in (self.kafka, self.postgres, self.s3):
            store.environment = base_env()  # none of the shell's keys, as for the programs
        self.started: list[ProcessService | Kafka | Postgres | S3Server] = []
        # Until prepare_lake() makes IAM users: the keys moto takes while it checks none.
        self.lake_keys = self.admin_keys = (S3_KEY_ID, S3_SECRET)

    @property
    def env(self) -> dict[str, str]:
        """The project's settings for this run, for the person at the keyboard: the owner's
        database URL, S3 keys that may do anything (`.run/env`, the commands of guide())."""
        key, secret = self.admin_keys
        return {**self.capture_env, **self.lake_env, "S3_ACCESS_KEY_ID": key,
                "S3_SECRET_ACCESS_KEY": secret, "DATABASE_URL": self.postgres.dsn,
                **self.proxy_env}

    @property
    def capture_env(self) -> dict[str, str]:
        """What the proxy and both sinks must agree on."""
        return {"KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
                "CAPTURE_TOPIC": self.settings.topic}

    @property
    def lake_env(self) -> dict[str, str]:
        """The lake sink's settings, with its write-only keys."""
        key, secret = self.lake_keys
        return {
            "S3_ENDPOINT_URL": self.s3.endpoint_url,
            "S3_BUCKET": self.settings.bucket,
            "S3_REGION": "us-east-1",
            "S3_ACCESS_KEY_ID": key,
            "S3_SECRET_ACCESS_KEY": secret,
        }

    @property
    def proxy_env(self) -> dict[str, str]:
        s = self.settings
        return {
            "PROXY_ROUTES": (
                f"app_a=http://{LOOPBACK}:{s.app_a_port}@{s.proxy_a_port},"
                f"app_b=http://{LOOPBACK}:{s.app_b_port}@{s.proxy_b_port}"),
            "PROXY_METRICS_PORT": str(s.proxy_metrics_port),
            # Captures wait here while Kafka is out of reach, across restarts of the proxy.
            "CAPTURE_SPOOL_DIR": str(s.run_dir / "spool"),
        }

    @property
    def writer_url(self) -> str:
        """The TimescaleDB sink's database URL: the writer's login, no password (trust)."""
        pg = self.postgres
        return f"postgresql://{WRITER_LOGIN}@{pg.host}:{pg.port}/{pg.dbname}"

    def programs(self) -> list[Program]:
        s, python = self.settings, sys.executable
        gunicorn = [python, "-m", "gunicorn", "-w", "2"]
        return [
            Program("sink-timescale", [python, "-m", "sinks", "timescale"],
                    {**self.capture_env, "DATABASE_URL": self.writer_url,
                     "TIMESCALE_MIGRATE": "false",
                     "SINK_METRICS_PORT": str(s.timescale_metrics_port)},
                    self.logs, s.timescale_metrics_port, TIMESCALE_SETTINGS),
            Program("sink-lake", [python, "-m", "sinks", "lake"],
                    {**self.capture_env, **self.lake_env,
                     # A new user's requests in the lake within seconds, not the sink's
                     # minute (fewer, larger objects); their own SINK_BATCH_MAX_AGE_MS wins.
                     "SINK_BATCH_MAX_AGE_MS": os.environ.get("SINK_BATCH_MAX_AGE_MS",
                                                             RUN_LAKE_MAX_AGE_MS),
                     "SINK_METRICS_PORT": str(s.lake_metrics_port), "SINK_GROUP_ID": LAKE_GROUP},
                    self.logs, s.lake_metrics_port, LAKE_SETTINGS),
            Program("app_b", [*gunicorn, "-b", f"{LOOPBACK}:{s.app_b_port}", "apps.app_b:app"],
                    {"APP_B_DB": str(s.run_dir / "app_b.sqlite3")},
                    self.logs, s.app_b_port, APP_SETTINGS),
            Program("app_a", [*gunicorn, "-b", f"{LOOPBACK}:{s.app_a_port}", "apps.app_a:app"],
                    # app_a asks app_b through the proxy, so those calls are captured too
                    {"APP_B_URL": f"http://{LOOPBACK}:{s.proxy_b_port}"},
                    self.logs, s.app_a_port, APP_SETTINGS),
            Program("proxy", [python, "-m", "proxy"], {**self.capture_env, **self.proxy_env},
                    self.logs, s.proxy_a_port, PROXY_SETTINGS),
        ]

    def start(self, say=print) -> None:
        s = self.settings
        if s.reset and s.run_dir.exists():
            say(f"run: RUN_RESET: removing {s.run_dir}")
            shutil.rmtree(s.run_dir)
        self.logs.mkdir(parents=True, exist_ok=True)
        for service in (self.kafka, self.postgres, self.s3):
            self._start(service, say)
        self.prepare_database(say)
        self.prepare_lake(say)
        # moto lost the lake when it stopped: read the topic again from its start.
        asyncio.run(rewind_group(self.kafka.bootstrap_servers, s.topic, LAKE_GROUP))
        for program in self.programs():
            self._start(program, say)
        self.write_env(s.run_dir / "env")

    def prepare_database(self, say=print) -> None:
        """As the owner: the schema at head, and the sink's login in tapline_writer."""
        say(f"run: migrating the schema as {self.postgres.user}; the TimescaleDB sink logs in "
            f"as {WRITER_LOGIN} ({db.WRITER})")
        db.migrate(self.postgres.dsn)
        db.create_login(WRITER_LOGIN, "writer", None, self.postgres.dsn)

    def prepare_lake(self, say=print) -> None:
        """IAM users for the sink (PUT into the bucket) and for you (anything), then IAM on."""
        say(f"run: the lake sink's S3 key may only PUT into s3://{self.settings.bucket}")
        bucket = self.settings.bucket
        self.lake_keys = moto_user(self.s3.endpoint_url, LAKE_USER, {
            "Effect": "Allow", "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{bucket}/*"})
        self.admin_keys = moto_user(self.s3.endpoint_url, ADMIN_USER, {
            "Effect": "Allow", "Action": "s3:*", "Resource": "*"})
        moto_enforce_iam(self.s3.endpoint_url)

    def _start(self, service, say) -> None:
        say(f"run: starting {service.name}")
        self.started.append(service)
        service.start()

    def stop(self, say=print) -> None:
        """In reverse: the proxy flushes to Kafka, the sinks finish their batch, then the
        stores go."""
        while self.started:
            service = self.started.pop()
            say(f"run: stopping {service.name}")
            try:
                service.stop()
            except Exception as e:  # keep stopping the others
                say(f"run: {service.name} did not stop cleanly: {e}")

    def dead(self) -> list[str]:
        return [service.name for service in self.started if not service.running]

    def write_env(self, path: Path) -> None:
        """The run's settings in shell syntax, for `source .run/env`."""
        s = self.settings
        key, secret = self.admin_keys
        values = {
            **self.env,
            "PGHOST": self.postgres.host, "PGPORT": str(self.postgres.port),
            "PGUSER": self.postgres.user, "PGDATABASE": self.postgres.dbname,
            "AWS_ENDPOINT_URL": self.s3.endpoint_url, "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1",
            "TAPLINE_APP_A": f"http://{LOOPBACK}:{s.proxy_a_port}",
            "TAPLINE_APP_B": f"http://{LOOPBACK}:{s.proxy_b_port}",
        }
        write_private(path, "".join(f"export {k}={shlex.quote(v)}\n" for k, v in values.items()))

    def guide(self) -> str:
        s = self.settings
        a, b = f"http://{LOOPBACK}:{s.proxy_a_port}", f"http://{LOOPBACK}:{s.proxy_b_port}"
        return f"""
tapline is running. Send traffic to the apps through the proxy:
  curl {a}/hello
  curl -X POST -H "Authorization: mytoken" {a}/jobs
  ab -m POST -H "Authorization: mytoken" -n 500 -c 4 {a}/jobs
  make load                          # the seed's traffic plus some failures
Look at the results (after `source {s.run_dir}/env`):
  .venv/bin/tapline tail --from-beginning             # records on Kafka
  psql -c "SELECT app, method, path, status_code FROM http_requests ORDER BY time DESC LIMIT 5"
  psql -c "SELECT * FROM http_requests_5m ORDER BY bucket DESC LIMIT 5"
  .venv/bin/tapline lake ls
  .venv/bin/tapline lake query "SELECT count(*) FROM captures"
Logs: {self.logs}/   Settings: {s.run_dir}/env   app_b, through the proxy: {b}
Ctrl-C stops everything.
"""


def write_private(path: Path, text: str) -> None:
    """Replace `path` with `text`, readable by its owner only (0600) from the first byte: a
    new file made 0600 beside it, then renamed over it. An older file (0644 before) is
    replaced whole, so no moment exists in which others may read the keys."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # 0600
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def moto_user(endpoint_url: str, name: str, statement: dict) -> tuple[str, str]:
    """An IAM user of moto's with one inline policy statement, and its new access key. Only
    while moto checks no keys (before moto_enforce_iam)."""
    import botocore.session

    iam = botocore.session.get_session().create_client(
        "iam", endpoint_url=endpoint_url, region_name="us-east-1",
        aws_access_key_id=S3_KEY_ID, aws_secret_access_key=S3_SECRET)
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName=name, PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [statement]}))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def moto_enforce_iam(endpoint_url: str) -> None:
    """From now on moto checks every request's signature and its user's policies."""
    import urllib.request

    request = urllib.request.Request(f"{endpoint_url}/moto-api/reset-auth", data=b"0",
                                     method="POST", headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        answer.read()


async def rewind_group(bootstrap: str, topic: str, group: str) -> None:
    """Point `group` at the oldest record of every partition of `topic` (when the topic
    exists). Only while no member of the group runs."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import OffsetAndMetadata, TopicPartition

    from capture.topics import partitions

    numbers = await partitions(bootstrap, topic)
    if not numbers:
        return
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in numbers]
        consumer.assign(tps)
        oldest = await consumer.beginning_offsets(tps)
        await consumer.commit({tp: OffsetAndMetadata(offset, "") for tp, offset in
                               oldest.items()})
    finally:
        await consumer.stop()


def main() -> int:
    """`python -m stack run`: everything, until Ctrl-C or SIGTERM."""
    import signal
    import time

    from capture.settings import SettingsError
    from stack.errors import StackError

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def interrupt(signum, frame) -> None:
        raise KeyboardInterrupt

    try:
        pipeline = Pipeline(RunSettings.from_env())
    except SettingsError as e:
        say(f"run: {e}")
        return 2
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        pipeline.start(say)
        print(pipeline.guide(), flush=True)
        while not (dead := pipeline.dead()):
            time.sleep(1)
        say(f"run: error: {', '.join(dead)} stopped by itself; see {pipeline.logs}/")
        return 1
    except KeyboardInterrupt:
        return 0
    except StackError as e:
        say(f"run: error: {e}")
        return 1
    finally:
        # A second Ctrl-C must not cut the shutdown short and leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        pipeline.stop(say)
        say("run: stopped")
