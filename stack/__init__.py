"""Real services on loopback for tests and `make run`: Kafka, PostgreSQL, and S3 (moto).

TimescaleLite adds TimescaleDB's full edition, as WASM, for the tests of the schema.

Each service is an object with `start()`, `stop()` and `close()` and the address a client needs
(`bootstrap_servers`, `dsn`, `endpoint_url`). Launched services can be stopped and started again
on the same data and port. The `*_from_env` functions return an already running service instead
when its variable is set (KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL, S3_ENDPOINT_URL): see
stack.external for the rule.
"""

from stack.errors import NotLaunched, StackError, StartupFailed, ToolMissing
from stack.external import (
    ExternalKafka,
    ExternalPostgres,
    ExternalS3,
    kafka_from_env,
    postgres_from_env,
    s3_from_env,
)
from stack.kafka import Kafka, kafka_answers, kafka_libs
from stack.postgres import Postgres
from stack.s3 import S3Server
from stack.service import ProcessService, free_port, free_ports
from stack.timescale import TimescaleLite, pglite_modules

__all__ = [
    "ExternalKafka",
    "ExternalPostgres",
    "ExternalS3",
    "Kafka",
    "NotLaunched",
    "Postgres",
    "ProcessService",
    "S3Server",
    "StackError",
    "StartupFailed",
    "TimescaleLite",
    "ToolMissing",
    "free_port",
    "free_ports",
    "kafka_answers",
    "kafka_from_env",
    "kafka_libs",
    "pglite_modules",
    "postgres_from_env",
    "s3_from_env",
]
