"""A one-node Kafka (KRaft broker and controller in one JVM) on loopback, from Maven's jars.

Debian ships no Kafka broker, but Maven Central has its jars: `kafka_libs()` fetches them once into
a cache folder with stack/pom.xml, and `Kafka` runs `kafka.Kafka` from them, as Kafka's own
start script would.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from stack.cache import fetched_once
from stack.errors import StartupFailed, ToolMissing
from stack.service import LOOPBACK, ProcessService, free_ports, port_open

STACK_DIR = Path(__file__).resolve().parent
POM = STACK_DIR / "pom.xml"
LOG4J_CONFIG = STACK_DIR / "log4j2.xml"

# A small heap is plenty for tests. C1 only (TieredStopAtLevel=1) starts the broker about a
# second and a half faster on two cores; its lower peak speed does not matter next to mitmproxy.
DEFAULT_JVM_OPTIONS: tuple[str, ...] = (
    "-Xms128m",
    "-Xmx512m",
    "-XX:TieredStopAtLevel=1",
    "-Djava.awt.headless=true",
)
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


def kafka_libs(cache: Path | None = None, timeout_s: float = 900.0) -> Path:
    """Return the folder that holds the broker's jars, running Maven to fill it the first time.

    The folder is `<cache>/kafka-libs`, fetched again when stack/pom.xml changes (see
    stack.cache.fetched_once for the locking and the all-or-nothing rename).
    """

    def fill(folder: Path) -> None:
        mvn = shutil.which("mvn")
        if mvn is None:
            raise ToolMissing("Maven (mvn) is needed to fetch Kafka's jars but is not on PATH")
        command = [
            mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(POM),
            "dependency:copy-dependencies", f"-DoutputDirectory={folder}",
            "-DincludeScope=runtime",
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0 or not any(folder.glob("kafka_2.13-*.jar")):
            output = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
            raise StartupFailed(f"Maven could not fetch Kafka's jars ({' '.join(command)}):\n"
                                f"{output}")

    return fetched_once("kafka-libs", POM, fill, cache)


def find_java() -> Path:
    """The java of $JAVA_HOME, else the one on PATH; Kafka 4 brokers need Java 17 or newer."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return Path(home) / "bin" / "java"
    found = shutil.which("java")
    if found is None:
        raise ToolMissing("Java 17 or newer is needed to run Kafka but `java` is not on PATH")
    return Path(found)


def kafka_answers(bootstrap_servers: str, timeout_s: float = 5.0) -> bool:
    """Tell whether a Kafka cluster answers a metadata request and lists at least one broker.

    A KRaft broker opens its client port only once the controller has unfenced it, and lists
    itself in metadata only then, so this is true exactly when topics can be created and used.
    The round trip runs on a private event loop in a thread, so a caller that is itself inside
    an event loop (an async test) can use it too.
    """

    async def probe() -> bool:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap_servers, request_timeout_ms=int(timeout_s * 1000)
        )
        try:
            await admin.start()
            cluster = await admin.describe_cluster()
            return bool(cluster["brokers"])
        finally:
            await admin.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            return pool.submit(asyncio.run, asyncio.wait_for(probe(), timeout_s)).result()
        except (KafkaError, OSError, TimeoutError):
            return False


def new_cluster_id() -> str:
    """A cluster id as `kafka-storage random-uuid` prints it, without starting a JVM for it."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # Kafka avoids these: they read as options on a command line
            return text


class Kafka(ProcessService):
    """A single-node Kafka, broker and controller in one process, listening on 127.0.0.1.

    `workdir` holds the data (`data/`), the generated `server.properties` and the broker's console
    (`kafka.log`). Ports default to free ones and stay fixed for the object's life, so `stop()`
    then `start()` brings the same broker back, with its data, on the same address. `config`
    adds or overrides broker settings; `jvm_options` replaces DEFAULT_JVM_OPTIONS.

    The first start after the jars are fetched records the classes the JVM loads into a class
    data sharing archive next to the jars; later JVMs (the broker, the storage format) map it and
    start about a second faster each.
    """

    name = "Kafka"
    default_timeout_s = 60.0

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        controller_port: int | None = None,
        *,
        config: Mapping[str, str | int | bool] | None = None,
        jvm_options: Sequence[str] = DEFAULT_JVM_OPTIONS,
    ) -> None:
        super().__init__(workdir, "kafka.log")
        spare = [p for p in free_ports(3) if p not in (port, controller_port)]
        self.port = port or spare.pop()
        self.controller_port = controller_port or spare.pop()
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / "server.properties"
        self.config = dict(config or {})
        self.jvm_options = list(jvm_options)
        self._archive: Path | None = None  # the class archive this launch writes, if any
        self._libs: Path | None = None  # found by _prepare(), before each launch
        self._java: Path | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def properties(self) -> dict[str, str]:
        """The broker's settings: one node, loopback only, replication factors of one."""
        controller = f"{LOOPBACK}:{self.controller_port}"
        settings: dict[str, str | int | bool] = {
            "process.roles": "broker,controller",
            "node.id": 1,
            "controller.quorum.voters": f"1@{controller}",
            "listeners": f"PLAINTEXT://{self.bootstrap_servers},CONTROLLER://{controller}",
            "advertised.listeners": f"PLAINTEXT://{self.bootstrap_servers}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": 1,
            # Topics are made by the one that knows their settings (capture/topics.py, the
            # proxy for the capture topic), never on demand by a client's metadata request: a
            # sink that subscribed before the proxy started made a one-partition topic.
            "auto.create.topics.enable": False,
            # One partition per internal topic: creating the default 50 costs seconds on the
            # first consumer group, and one broker gains nothing from them.
            "offsets.topic.replication.factor": 1,
            "offsets.topic.num.partitions": 1,
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
            "transaction.state.log.num.partitions": 1,
            "share.coordinator.state.topic.replication.factor": 1,
            "share.coordinator.state.topic.min.isr": 1,
            "share.coordinator.state.topic.num.partitions": 1,
            "group.initial.rebalance.delay.ms": 0,
            "message.max.bytes": MAX_MESSAGE_BYTES,
        }
        settings.update(self.config)
        return {key: str(value).lower() if isinstance(value, bool) else str(value)
                for key, value in settings.items()}

    def _prepare(self) -> None:
        self._libs = kafka_libs()
        self._java = find_java()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = [f"{key}={value}" for key, value in self.properties().items()]
        self.config_path.write_text("\n".join(lines) + "\n")
        if not (self.data_dir / "meta.properties").exists():
            self._format()

    def _java_command(self, *options: str, record_classes: bool = False) -> list[str]:
        """A java command line on the broker's jars, sharing classes through the archive.

        Without an archive yet, `record_classes` has this JVM write one as it exits.
        """
        assert self._libs is not None and self._java is not None, "_prepare() comes first"
        archive = self._libs / f"broker-{_jvm_key(self._java)}.jsa"
        sharing: list[str] = []
        if archive.exists():
            sharing = [f"-XX:SharedArchiveFile={archive}"]
        elif record_classes:
            self._archive = archive.with_name(f"{archive.name}.{os.getpid()}-{id(self)}.partial")
            sharing = [f"-XX:ArchiveClassesAtExit={self._archive}"]
        jars = sorted(str(jar) for jar in self._libs.glob("*.jar"))
        return [
            str(self._java), *options, *sharing,
            # The JVM may warn about the archive (written, stale, unusable): none of it is news.
            "-Xlog:cds*=off",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}", "-cp", os.pathsep.join(jars),
        ]

    def _format(self) -> None:
        """Write meta.properties and the bootstrap metadata, as `kafka-storage.sh format` does."""
        command = [
            *self._java_command("-Xmx256m", "-XX:TieredStopAtLevel=1"), "kafka.tools.StorageTool",
            "format", "--ignore-formatted", "-t", new_cluster_id(), "-c", str(self.config_path),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120,
                              env=self._env())
        if done.returncode != 0:
            raise StartupFailed(f"Kafka's storage format failed ({done.returncode}):\n"
                                f"{done.stdout}{done.stderr}".rstrip())

    def _command(self) -> list[str]:
        self._archive = None
        java = self._java_command(*self.jvm_options, record_classes=True)
        return [*java, "kafka.Kafka", str(self.config_path)]

    def _is_ready(self) -> bool:
        return port_open(LOOPBACK, self.port) and kafka_answers(self.bootstrap_servers)

    def _after_stop(self, clean: bool) -> None:
        # The JVM writes the archive as it exits; only a broker that ran and ended on SIGTERM has
        # loaded every class a start needs and finished writing the file.
        partial, self._archive = self._archive, None
        if partial is None or not partial.exists():
            return
        if clean:
            partial.replace(partial.with_name(partial.name.split(".jsa.")[0] + ".jsa"))
        else:
            partial.unlink(missing_ok=True)


def _jvm_key(java: Path) -> str:
    """Names a class archive after the JVM that wrote it: another JVM could not use it."""
    real = java.resolve()
    stat = real.stat()
    return hashlib.sha256(f"{real}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
