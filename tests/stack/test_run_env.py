"""What `make run` hands out: `.run/env` readable by its owner only. Nothing is started
here; tests/run/test_run.py checks the real run."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from stack.pipeline import Pipeline, RunSettings


@pytest.fixture
def pipeline(tmp_path: Path) -> Pipeline:
    return Pipeline(RunSettings.from_env({"RUN_DIR": str(tmp_path / "run")}))


def test_the_env_file_is_written_0600_over_an_older_0644_one(pipeline, tmp_path):
    path = tmp_path / "env"
    path.write_text("export OLD=1\n")
    path.chmod(0o644)
    pipeline.admin_keys = ("admin-key", "admin-secret")
    pipeline.write_env(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert "export AWS_SECRET_ACCESS_KEY=admin-secret\n" in text and "OLD" not in text
    assert [p.name for p in tmp_path.iterdir()] == ["env"]  # no temporary file left


def test_a_new_env_file_is_0600_whatever_the_umask(pipeline, tmp_path):
    old = os.umask(0)
    try:
        pipeline.write_env(tmp_path / "env")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "env").stat().st_mode) == 0o600
