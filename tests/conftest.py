"""Services shared by the tests: real ones, started on loopback, or those the environment names.

A test that needs a service and cannot start it fails (the launcher raises); it never skips.
"""

from __future__ import annotations

import os
import tempfile

import pytest

from stack import Kafka, TimescaleLite, kafka_from_env, postgres_from_env


@pytest.fixture(scope="session")
def kafka(tmp_path_factory):
    """The suite's Kafka: KAFKA_BOOTSTRAP_SERVERS if set, else a broker of its own."""
    service = kafka_from_env(tmp_path_factory.mktemp("kafka"))
    service.start()
    yield service
    service.close()  # stops a broker of our own; leaves one the environment named alone


@pytest.fixture
def own_kafka(tmp_path_factory):
    """A broker for one test alone, which the test may stop and start again."""
    service = Kafka(tmp_path_factory.mktemp("own-kafka"))
    service.start()
    yield service
    service.close()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    """The suite's PostgreSQL: DATABASE_URL's if set, else a cluster of its own."""
    service = postgres_from_env(tmp_path_factory.mktemp("postgres"))
    service.start()
    yield service
    service.close()


@pytest.fixture(scope="session")
def timescale(tmp_path_factory):
    """TimescaleDB's full edition as WASM (PGlite), for the whole session. It serves one
    connection at a time: close one before opening the next."""
    service = TimescaleLite(tmp_path_factory.mktemp("timescale"))
    service.start()
    yield service
    service.close()


# The fault scenarios' lines of figures (tests/faults), gathered in one file across
# pytest-xdist's workers (make test runs two) and printed by the process that writes the
# summary. Made before the workers start, which inherit the variable.
FAULT_LINES_FILE = "TAPLINE_FAULT_LINES_FILE"


def pytest_configure(config) -> None:
    if not hasattr(config, "workerinput"):
        fd, path = tempfile.mkstemp(prefix="tapline-fault-lines-", suffix=".txt")
        os.close(fd)
        os.environ[FAULT_LINES_FILE] = path


def pytest_terminal_summary(terminalreporter, config) -> None:
    path = os.environ.get(FAULT_LINES_FILE)
    if hasattr(config, "workerinput") or not path or not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as found:
        lines = [line.rstrip("\n") for line in found if line.strip()]
    os.unlink(path)
    if lines:
        terminalreporter.section("fault scenarios")
        for line in lines:
            terminalreporter.write_line(line)
