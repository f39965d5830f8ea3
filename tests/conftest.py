"""Services shared by the tests: real ones, started on loopback, or those the environment names.

A test that needs a service and cannot start it fails (the launcher raises); it never skips.
"""

from __future__ import annotations

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
