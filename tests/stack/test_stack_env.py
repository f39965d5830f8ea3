"""The environment decides between a launched service and one that already runs elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from stack import (
    ExternalPostgres,
    ExternalS3,
    Kafka,
    NotLaunched,
    Postgres,
    S3Server,
    StartupFailed,
    free_port,
    free_ports,
    kafka_from_env,
    postgres_from_env,
    s3_from_env,
)
from stack.kafka import new_cluster_id


def test_without_variables_services_are_launched(tmp_path: Path) -> None:
    assert isinstance(kafka_from_env(tmp_path, env={}), Kafka)
    assert isinstance(postgres_from_env(tmp_path, env={"DATABASE_URL": " "}), Postgres)
    assert isinstance(s3_from_env(tmp_path, env={}), S3Server)


def test_database_url_is_taken_apart(tmp_path: Path) -> None:
    dsn = "postgresql://tap%40line:secret@db.example:6543/captures"
    outside = postgres_from_env(tmp_path, env={"DATABASE_URL": dsn})
    assert isinstance(outside, ExternalPostgres)
    assert (outside.dsn, outside.host, outside.port) == (dsn, "db.example", 6543)
    assert (outside.user, outside.dbname) == ("tap@line", "captures")


def test_an_outside_service_refuses_to_stop_and_says_why(tmp_path: Path) -> None:
    outside = s3_from_env(tmp_path, env={"S3_ENDPOINT_URL": "http://127.0.0.1:9/"})
    assert isinstance(outside, ExternalS3)
    assert outside.endpoint_url == "http://127.0.0.1:9"
    with pytest.raises(NotLaunched, match="S3_ENDPOINT_URL"):
        outside.stop()
    outside.close()  # the end of use of a borrowed service does nothing


def test_an_outside_service_that_does_not_answer_fails_to_start(tmp_path: Path) -> None:
    port = free_port()
    outside = s3_from_env(tmp_path, env={"S3_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
    with pytest.raises(StartupFailed, match=f"127.0.0.1:{port}.*S3_ENDPOINT_URL"):
        outside.start(timeout=0.3)


def test_free_ports_are_distinct() -> None:
    assert len(set(free_ports(5))) == 5


def test_kafka_picks_two_ports_and_keeps_a_given_one(tmp_path: Path) -> None:
    kafka = Kafka(tmp_path, port=19092)
    assert kafka.bootstrap_servers == "127.0.0.1:19092"
    assert kafka.controller_port not in (19092, 0)
    settings = kafka.properties()
    assert settings["controller.quorum.voters"] == f"1@127.0.0.1:{kafka.controller_port}"
    assert int(settings["message.max.bytes"]) >= 8 * 1024 * 1024


def test_cluster_ids_look_like_kafkas() -> None:
    for _ in range(200):
        cluster_id = new_cluster_id()
        assert len(cluster_id) == 22
        assert not cluster_id.startswith("-")
