"""Fault scenarios on the whole pipeline: the services they share, and their summary.

Each scenario reports one line of figures; pytest captures what tests print, so the lines are
kept in the run's stash and printed at the end, in a section of their own ("fault
scenarios"), whatever else the run prints.
"""

from __future__ import annotations

import pytest

from tests.sinks.lake_fixtures import fresh_bucket, s3_service  # noqa: F401 - fixtures
from tests.support import fresh_database

LINES = pytest.StashKey[list[str]]()


@pytest.fixture
def database(postgres) -> str:
    """A fresh database on the suite's PostgreSQL, for one scenario."""
    return fresh_database(postgres.dsn)


@pytest.fixture
def report(request):
    """report(line): add a scenario's line to the run's summary."""
    lines = request.config.stash.setdefault(LINES, [])
    return lines.append


def pytest_terminal_summary(terminalreporter, config) -> None:
    lines = config.stash.get(LINES, [])
    if lines:
        terminalreporter.section("fault scenarios")
        for line in lines:
            terminalreporter.write_line(line)
