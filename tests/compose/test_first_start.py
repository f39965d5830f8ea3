"""What `make up` needs to work the first time on a current Docker host, as far as it can be
checked with no engine: Compose v2's own parser (`docker-compose config`), the Makefile as
make reads it, the Dockerfile and requirements as pip and Python read them, and the one-shot
scripts run against stand-ins for the tools they call."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROJECT_IMAGE = "tapline:local"
BUILDER = "image"
# The host ports, the variables that move them, and the container port behind each.
HOST_PORTS = {"APP_A_HOST_PORT": ("proxy", 5000, 5000), "APP_B_HOST_PORT": ("proxy", 5001, 5001),
              "TIMESCALEDB_HOST_PORT": ("timescaledb", 5432, 5432),
              "S3_HOST_PORT": ("seaweedfs", 8333, 8333),
              "GRAFANA_HOST_PORT": ("grafana", 3000, 3000)}
TEST_TOOLS = {"pytest", "pytest-asyncio", "moto", "ruff", "responses", "cfn-lint", "docker"}


def config(binary: Path, env: dict[str, str] | None = None) -> dict:
    done = subprocess.run(
        [str(binary), "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE), "config",
         "--format", "json"],
        capture_output=True, text=True, timeout=120, check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT), **(env or {})})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def services(docker_compose) -> dict[str, dict]:
    return config(docker_compose)["services"]


# --- 1. the image is built once ----------------------------------------------------------------


def test_one_service_builds_the_image_and_the_others_never_pull_it(services):
    # Compose builds one bake target per service with a build section; several targets
    # exporting one tag fail ("image already exists").
    builders = [name for name, service in services.items() if "build" in service]
    assert builders == [BUILDER]
    builder = services[BUILDER]
    assert builder["image"] == PROJECT_IMAGE and builder["build"]["context"] == str(ROOT)
    assert builder["pull_policy"] == "build"  # never looked for on Docker Hub
    users = [name for name, service in services.items()
             if service["image"] == PROJECT_IMAGE and name != BUILDER]
    assert {"app_a", "app_b", "proxy", "migrate", "sink-timescale", "sink-lake"} <= set(users)
    for name in users:
        assert services[name]["pull_policy"] == "never", name
        # Started alone (docker compose up sink-lake), a service still has its image built.
        assert services[name]["depends_on"][BUILDER]["condition"] == (
            "service_completed_successfully"), name


def test_the_builder_checks_each_service_module_imports(services):
    command = " ".join(services[BUILDER]["command"])
    for module in ("apps.app_a", "apps.app_b", "db.__main__", "proxy.__main__",
                   "sinks.__main__", "tapline.cli"):
        assert module in command, module


# --- 2. the capture topic has the proxy's shape --------------------------------------------


def test_kafka_never_makes_a_topic_on_demand(services):
    # A sink that subscribes before the proxy runs would otherwise make the capture topic
    # with the broker's default of one partition.
    assert services["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "CAPTURE_TOPIC_PARTITIONS" in services["proxy"]["environment"]


# --- 3. one-shots that end, a wait that ends -------------------------------------------------


def test_make_up_bounds_its_wait_and_says_what_to_do():
    done = subprocess.run(["make", "-n", "up"], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    assert re.search(r"docker compose up -d --build --wait --wait-timeout 300\b", done.stdout)
    assert "make ps" in done.stdout and "make logs" in done.stdout
    done = subprocess.run(["make", "-n", "up", "UP_WAIT_S=42"], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    assert "--wait-timeout 42" in done.stdout


def test_compose_knows_the_wait_timeout_option(docker_compose):
    done = subprocess.run([str(docker_compose), "up", "--help"], capture_output=True,
                          text=True, check=False)
    assert "--wait-timeout" in done.stdout


FAKE_WEED = """#!/bin/sh
# weed shell, as init.sh calls it: fails its first $FAIL_FIRST calls, then lists or
# creates buckets in $STATE.
calls=$(cat "$STATE.calls" 2>/dev/null || echo 0)
echo $((calls + 1)) > "$STATE.calls"
if [ "$calls" -lt "$FAIL_FIRST" ]; then
  echo "error: dial tcp: connection refused" >&2
  exit 1
fi
read -r command
case "$command" in
  s3.bucket.list) cat "$STATE" 2>/dev/null || true ;;
  "s3.bucket.create -name "*) echo "  ${command##* }" >> "$STATE" ;;
esac
"""
FAKE_WGET = """#!/bin/sh
# wget, as init.sh calls it: succeeds once the bucket in the URL exists in $STATE
for url; do :; done
bucket=$(echo "$url" | cut -d/ -f4)
grep -q "^  $bucket$" "$STATE" 2>/dev/null
"""


def run_init(tmp_path: Path, fail_first: int, tries: int = 10) -> subprocess.CompletedProcess:
    tools = tmp_path / "bin"
    tools.mkdir(exist_ok=True)
    for name, text in (("weed", FAKE_WEED), ("wget", FAKE_WGET)):
        (tools / name).write_text(text)
        (tools / name).chmod(0o755)
    env = {"PATH": f"{tools}:/usr/bin:/bin", "S3_BUCKET": "captures",
           "STATE": str(tmp_path / "buckets"), "FAIL_FIRST": str(fail_first),
           "INIT_TRIES": str(tries), "INIT_RETRY_DELAY_S": "0"}
    return subprocess.run(["sh", str(ROOT / "deploy/seaweedfs/init.sh"), "seaweedfs"],
                          capture_output=True, text=True, timeout=60, env=env, check=False)


def test_seaweedfs_init_rides_out_a_master_that_is_not_ready_yet(tmp_path):
    done = run_init(tmp_path, fail_first=3)
    assert done.returncode == 0, done.stderr
    assert "try 1 of 10" in done.stderr and "publicly readable" in done.stdout
    assert (tmp_path / "buckets").read_text().split() == ["captures"]
    again = run_init(tmp_path, fail_first=0)  # safe to run again: the bucket is kept
    assert again.returncode == 0 and (tmp_path / "buckets").read_text().split() == ["captures"]


def test_seaweedfs_init_gives_up_with_a_clear_line(tmp_path):
    done = run_init(tmp_path, fail_first=1000, tries=4)
    assert done.returncode != 0
    assert "make bucket captures through the master at seaweedfs:9333: failed 4 times" in (
        done.stderr)


# --- 4. host ports that can move -----------------------------------------------------------


def published(services: dict[str, dict]) -> dict[tuple[str, int], int]:
    """(service, container port) -> host port"""
    return {(name, int(port["target"])): int(port["published"])
            for name, service in services.items() for port in service.get("ports", [])}


def test_every_host_port_has_its_default(services):
    assert published(services) == {(name, target): host
                                   for name, host, target in HOST_PORTS.values()}


def test_every_host_port_can_be_moved(docker_compose):
    moved = {variable: str(20000 + i) for i, variable in enumerate(HOST_PORTS)}
    services = config(docker_compose, moved)["services"]
    assert published(services) == {(name, target): int(moved[variable])
                                   for variable, (name, _host, target) in HOST_PORTS.items()}
    # Inside, nothing moves: the proxy still listens where the apps' clients expect it.
    assert "@5000" in services["proxy"]["environment"]["PROXY_ROUTES"]


def test_the_readme_names_the_port_variables():
    text = (ROOT / "README.md").read_text()
    docker = text[text.index("### In Docker"):]
    docker = docker[:docker.index("\n### ", 5)]
    for variable in HOST_PORTS:
        assert f"`{variable}`" in docker, variable


# --- 5. image hygiene ------------------------------------------------------------------------


def test_grafana_is_the_image_that_is_still_published(services):
    # grafana/grafana-oss stops at 12.3; grafana/grafana is the same open-source build.
    assert services["grafana"]["image"].startswith("grafana/grafana:")


def test_bind_mounts_are_labelled_for_selinux(services):
    binds = [(name, volume) for name, service in services.items()
             for volume in service.get("volumes", []) if volume["type"] == "bind"]
    assert binds
    for name, volume in binds:
        assert volume["bind"].get("selinux") == "z", (name, volume["source"])
        assert volume.get("read_only"), (name, volume["source"])


def dockerfile_commands() -> list[str]:
    text = re.sub(r"\\\n", "", (ROOT / "Dockerfile").read_text())
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_the_dockerfile_checks_the_installed_package_not_the_tree():
    lines = dockerfile_commands()
    check = next(line for line in lines if "python -c" in line and "import" in line)
    # Run where the source tree cannot shadow the package pip installed.
    before = check.split("python -c")[0]
    assert re.search(r"\bcd /(\s|&&)", before), check
    workdirs = [line for line in lines[:lines.index(check)] if line.startswith("WORKDIR ")]
    assert workdirs[-1] == "WORKDIR /src"  # so the cd is what makes the difference
    for module in ("apps.app_a", "apps.app_b", "proxy.__main__", "sinks.__main__",
                   "db.__main__", "tapline.cli"):
        assert module in check, module


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "-r ")):
            name, _, version = line.partition("==")
            assert version, f"{path.name}: {line} is not pinned"
            found[canonicalize_name(name)] = version
    return found


def closure(requirements: list[str]) -> set[str]:
    """Every distribution the requirements need, as this venv's metadata says."""
    environment = default_environment()
    seen: set[str] = set()
    todo = [(Requirement(r), "") for r in requirements]
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker and not requirement.marker.evaluate({**environment,
                                                                   "extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        extras = requirement.extras or {""}
        key_new = name not in seen
        seen.add(name)
        if not key_new and extras == {""}:
            continue
        for child in metadata.requires(requirement.name) or []:
            for wanted in extras:
                todo.append((Requirement(child), wanted))
    return seen


def test_the_image_installs_what_the_services_run_and_nothing_else():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = pins(ROOT / "requirements.txt")
    assert set(runtime) == closure(project["dependencies"]), (
        "requirements.txt must be exactly what pyproject.toml's dependencies need")
    assert not TEST_TOOLS & set(runtime)
    test = pins(ROOT / "requirements-test.txt")
    assert "-r requirements.txt" in (ROOT / "requirements-test.txt").read_text()
    assert closure(project["optional-dependencies"]["test"]) - set(runtime) <= set(test)
    assert not set(runtime) & set(test)  # each pin in one place
    dockerfile = " ".join(dockerfile_commands())
    assert "requirements-test.txt" not in dockerfile
    assert "pip install -r requirements.txt" in dockerfile


def test_the_venv_has_every_pin():
    for path in (ROOT / "requirements.txt", ROOT / "requirements-test.txt"):
        for name, version in pins(path).items():
            assert metadata.version(name) == version, f"{path.name}: {name}"


def test_make_installs_the_test_requirements():
    text = (ROOT / "Makefile").read_text()
    assert "pip install --quiet -r requirements-test.txt" in text
    assert os.path.exists(ROOT / "requirements-test.txt")
