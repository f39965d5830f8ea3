"""Fault scenarios on the whole pipeline: the services they share, and their summary.

Each scenario reports one line of figures; pytest captures what tests print, so the lines are
written to a file that tests/conftest.py prints at the end, in a section of their own
("fault scenarios"), whatever else the run prints, also from pytest-xdist's workers.
"""

from __future__ import annotations

import os

import pytest

from stack.support import fresh_database
from tests.conftest import FAULT_LINES_FILE
from tests.sinks.lake_fixtures import fresh_bucket, s3_service  # noqa: F401 - fixtures


@pytest.fixture
def database(postgres) -> str:
    """A fresh database on the suite's PostgreSQL, for one scenario."""
    return fresh_database(postgres.dsn)


@pytest.fixture
def report():
    """report(line): add a scenario's line to the run's summary (tests/conftest.py)."""
    path = os.environ[FAULT_LINES_FILE]

    def add(line: str) -> None:
        with open(path, "a", encoding="utf-8") as out:
            out.write(line + "\n")

    return add
