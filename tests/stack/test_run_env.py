"""What `make run` hands out: `.run/env` readable by its owner only, and each process an
environment built for it, with none of the shell's credentials. Nothing is started here;
tests/run/test_run.py reads the environments of the real processes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from stack.pipeline import Pipeline, RunSettings, program_env

# What a shell may hold after `source .run/env` of another run, or an admin's own keys.
POISON = {
    "AWS_ACCESS_KEY_ID": "poison-key-id",
    "AWS_SECRET_ACCESS_KEY": "poison-secret",
    "AWS_SESSION_TOKEN": "poison-token",
    "S3_ACCESS_KEY_ID": "poison-s3-key-id",
    "S3_SECRET_ACCESS_KEY": "poison-s3-secret",
    "DATABASE_URL": "postgresql://owner:poison-password@127.0.0.1:1/tapline",
    "PGPASSWORD": "poison-pgpassword",
    "GITHUB_TOKEN": "poison-github",
}


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


def test_no_process_gets_the_shells_credentials(pipeline, monkeypatch):
    for name, value in POISON.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CAPTURE_TOPIC_PARTITIONS", "4")  # the proxy's own tuning passes
    monkeypatch.setenv("LANG", "C.UTF-8")
    envs = {program.name: program._env() for program in pipeline.programs()}
    envs |= {"kafka": pipeline.kafka._env(), "s3": pipeline.s3._env(),
             "postgres": dict(pipeline.postgres.environment)}
    assert set(envs) == {"proxy", "app_a", "app_b", "sink-timescale", "sink-lake", "kafka",
                         "s3", "postgres"}
    for name, env in envs.items():
        leaked = {k: v for k, v in env.items() if "poison" in v}
        assert not leaked, f"{name}: {leaked}"
        assert env["LANG"] == "C.UTF-8" and env["PATH"] == os.environ["PATH"], name
    for name in ("proxy", "app_a", "app_b"):
        held = {k for k in envs[name] if k == "DATABASE_URL" or k.startswith(("S3_", "AWS_"))}
        assert not held, f"{name}: {held}"
    assert envs["proxy"]["CAPTURE_TOPIC_PARTITIONS"] == "4"
    assert "CAPTURE_TOPIC_PARTITIONS" not in envs["app_a"]
    # The sinks get the run's own: the writer's login, the lake's put-only key.
    assert envs["sink-timescale"]["DATABASE_URL"] == pipeline.writer_url
    assert envs["sink-lake"]["S3_ACCESS_KEY_ID"] == pipeline.lake_keys[0]


def test_a_program_env_is_the_base_its_settings_and_its_own():
    parent = {"PATH": "/bin", "HOME": "/home/u", "LC_ALL": "C", "PROXY_WORKERS": "1",
              "SINK_GROUP_ID": "g", "DATABASE_URL": "postgresql://owner:x@h/d", "EDITOR": "vi"}
    env = program_env({"PROXY_ROUTES": "r"}, ("PROXY_",), parent)
    assert env == {"PATH": "/bin", "HOME": "/home/u", "LC_ALL": "C", "PROXY_WORKERS": "1",
                   "PYTHONPATH": env["PYTHONPATH"], "PROXY_ROUTES": "r"}
    assert Path(env["PYTHONPATH"], "stack", "pipeline.py").is_file()
