"""What the compose tests share: Compose v2's own parser, fetched once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.compose.compose_binary import ComposeUnavailable, compose_binary


@pytest.fixture(scope="session")
def docker_compose() -> Path:
    try:
        return compose_binary()
    except ComposeUnavailable as e:
        pytest.fail(f"Compose v2 is needed to check docker-compose.yml and could not be had: {e}")
