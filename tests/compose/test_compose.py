"""docker-compose.yml and the Dockerfile say what the docs and the code say.

No Docker engine runs here, so nothing is started: the files are read as YAML, and then by
Compose v2's own parser (`docker-compose config`, fetched by compose_binary.py). A machine that
cannot fetch that parser fails the test that needs it; it does not skip.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import yaml

from proxy.settings import parse_routes

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CONFIGURATION = ROOT / "docs" / "configuration.md"
PYPROJECT = ROOT / "pyproject.toml"

PROJECT_IMAGE = "tapline:local"
PROJECT_SERVICES = {"app_a", "app_b", "proxy", "sink-timescale", "sink-lake"}
PROJECT_ONE_SHOT = {"migrate", "image"}  # the project's image, run once (image builds it)
STORES = {"kafka", "timescaledb", "seaweedfs"}
ONE_SHOT = {"seaweedfs-init"} | PROJECT_ONE_SHOT
TOOLS = {"grafana"}
LONG_RUNNING = PROJECT_SERVICES | STORES | TOOLS
# What the host sees, and of whom: the apps' usual ports (the proxy's listeners), the database,
# the lake's S3 API, Grafana. All on loopback.
PUBLISHED = {5000: "proxy", 5001: "proxy", 5432: "timescaledb", 8333: "seaweedfs",
             3000: "grafana"}
LOOPBACK = "127.0.0.1"


# --- the file as YAML ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict) -> dict[str, dict]:
    return compose["services"]


def readme_settings() -> set[str]:
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", CONFIGURATION.read_text(), re.MULTILINE))


def short_ports(service: dict) -> list[tuple[str, int, int]]:
    """(host IP, host port, container port) of each `ports` entry in short syntax; a host
    port given by a variable (`${NAME:-5000}`) counts as its default."""
    published = []
    for entry in service.get("ports", []):
        assert isinstance(entry, str), f"write ports as HOST_IP:HOST:CONTAINER strings: {entry}"
        host_ip, host, container = re.fullmatch(
            r"([^:]+):(\$\{[A-Z0-9_]+:-\d+\}|\d+):(\d+)", entry).groups()
        if host.startswith("${"):
            host = host.rstrip("}").rpartition("-")[2]
        published.append((host_ip, int(host), int(container)))
    return published


def test_compose_v2_file_without_version_key(compose):
    assert "version" not in compose
    assert compose["name"] == "tapline"


def test_every_service_is_there(services):
    assert set(services) == LONG_RUNNING | ONE_SHOT


def test_project_services_run_the_project_image(services):
    for name in PROJECT_SERVICES | PROJECT_ONE_SHOT:
        assert services[name]["image"] == PROJECT_IMAGE, name
    # Built once, by one service (test_first_start.py has why).
    assert [name for name, service in services.items() if "build" in service] == ["image"]
    assert services["image"]["build"]["context"] == "."
    for name in (STORES | ONE_SHOT | TOOLS) - PROJECT_ONE_SHOT:
        assert services[name]["image"] != PROJECT_IMAGE, name


def test_long_running_services_have_health_checks_and_restart(services):
    for name in LONG_RUNNING:
        service = services[name]
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        assert service.get("restart") == "unless-stopped", name


def test_one_shot_services_are_not_restarted(services):
    for name in ONE_SHOT:
        assert "healthcheck" not in services[name], name
        assert services[name].get("restart") in ("no", "on-failure"), name


def test_every_dependency_waits_on_a_condition(services):
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on must name conditions"
        for target, how in depends_on.items():
            wanted = ("service_completed_successfully" if target in ONE_SHOT
                      else "service_healthy")
            assert how.get("condition") == wanted, f"{name} -> {target}"


def test_every_one_shot_is_awaited_by_a_long_running_service(services):
    # Else `docker compose up --wait` takes the one shot's exit, even a clean one, as a failure.
    for one_shot in ONE_SHOT:
        assert any(service.get("depends_on", {}).get(one_shot, {}).get("condition")
                   == "service_completed_successfully"
                   for name, service in services.items() if name in LONG_RUNNING), one_shot


def test_start_order(services):
    def needs(name):
        return set(services[name].get("depends_on", {}))

    assert needs("proxy") == {"image", "kafka", "app_a", "app_b"}
    assert needs("app_a") == needs("app_b") == {"image"}
    assert needs("migrate") == {"image", "timescaledb"}
    assert needs("sink-timescale") == {"image", "kafka", "timescaledb", "migrate"}
    assert needs("sink-lake") == {"image", "kafka", "seaweedfs", "seaweedfs-init"}
    assert needs("seaweedfs-init") == {"seaweedfs"}
    assert needs("grafana") == {"timescaledb", "migrate"}
    assert needs("image") == set()


def test_project_services_use_only_documented_settings(services):
    documented = readme_settings()
    assert {"PROXY_ROUTES", "DATABASE_URL"} <= documented  # the table was found
    for name in PROJECT_SERVICES | PROJECT_ONE_SHOT:
        unknown = set(services[name].get("environment", {})) - documented
        assert not unknown, f"{name}: not in docs/configuration.md's table: {sorted(unknown)}"


def test_only_the_intended_ports_are_published(services):
    published = {}
    for name, service in services.items():
        for host_ip, host, container in short_ports(service):
            assert host_ip == LOOPBACK, f"{name} publishes {host} beyond loopback"
            assert host == container, f"{name}: {host} -> {container}"
            assert host not in published, f"{host} published twice"
            published[host] = name
    assert published == PUBLISHED
    for name in services:
        assert "expose" not in services[name], name
        assert services[name].get("network_mode") != "host", name


def test_the_proxy_fronts_both_apps_on_their_usual_ports(services):
    env = services["proxy"]["environment"]
    routes = {route.app: route for route in parse_routes(env["PROXY_ROUTES"])}
    assert routes["app_a"].upstream == "http://app_a:5000"
    assert routes["app_b"].upstream == "http://app_b:5001"
    assert {route.port for route in routes.values()} == {5000, 5001}
    assert env["PROXY_LISTEN_HOST"] == "0.0.0.0"
    # app_a calls app_b through the proxy's app_b listener, so that call is captured too.
    assert services["app_a"]["environment"]["APP_B_URL"] == f"http://proxy:{routes['app_b'].port}"
    commands = {name: " ".join(services[name]["command"]) for name in ("app_a", "app_b")}
    assert commands["app_a"].endswith("-b 0.0.0.0:5000 apps.app_a:app")
    assert commands["app_b"].endswith("-b 0.0.0.0:5001 apps.app_b:app")


def test_producers_and_consumers_agree(services):
    clients = ("proxy", "sink-timescale", "sink-lake")
    for key in ("KAFKA_BOOTSTRAP_SERVERS", "CAPTURE_TOPIC", "CAPTURE_MAX_RECORD_BYTES"):
        values = {services[name]["environment"][key] for name in clients}
        assert len(values) == 1, f"{key} differs between {clients}: {values}"
    assert services["proxy"]["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    broker = services["kafka"]["environment"]
    assert broker["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    record_max = int(services["proxy"]["environment"]["CAPTURE_MAX_RECORD_BYTES"]
                     .removeprefix("${CAPTURE_MAX_RECORD_BYTES:-").rstrip("}"))
    assert int(broker["KAFKA_MESSAGE_MAX_BYTES"]) >= 2 * record_max


def test_sinks_reach_their_stores(services):
    timescale = services["sink-timescale"]["environment"]
    assert "@timescaledb:5432/tapline" in timescale["DATABASE_URL"]
    assert services["timescaledb"]["environment"]["POSTGRES_DB"] == "tapline"
    lake = services["sink-lake"]["environment"]
    assert lake["S3_ENDPOINT_URL"] == "http://seaweedfs:8333"
    # The store renders its identities from the very values the sink is given.
    store = services["seaweedfs"]["environment"]
    for key in ("S3_BUCKET", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"):
        assert store[key] == lake[key], key
    assert services["seaweedfs-init"]["environment"]["S3_BUCKET"] == lake["S3_BUCKET"]
    assert {lake["SINK_METRICS_PORT"], timescale["SINK_METRICS_PORT"]} == {9102, 9103}



def datasource() -> dict:
    source = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/timescaledb.yaml").read_text())
    (only,) = source["datasources"]
    return only


def test_grafana_reads_the_database_it_is_given(services):
    grafana = services["grafana"]
    assert grafana["image"].startswith("grafana/grafana:")
    env = grafana["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:-")
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro,z" in grafana["volumes"]
    assert "/api/health" in " ".join(grafana["healthcheck"]["test"])
    source = datasource()
    assert source["url"] == "timescaledb:5432"
    assert source["jsonData"]["database"] == services["timescaledb"]["environment"][
        "POSTGRES_DB"]
    # As the reader whose password this variable holds (see the least-privilege tests).
    assert source["secureJsonData"]["password"] == "${TAPLINE_READER_PASSWORD}"
    assert env["TAPLINE_READER_PASSWORD"] == services["migrate"]["environment"][
        "TAPLINE_READER_PASSWORD"]


def test_stores_keep_data_in_named_volumes(compose, services):
    for name in ("kafka", "timescaledb", "seaweedfs", "app_b", "grafana"):
        sources = [mount.split(":", 1)[0] for mount in services[name]["volumes"]]
        assert any(source in compose["volumes"] for source in sources), name


def test_mounted_files_exist(services):
    for name, service in services.items():
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_deploy_scripts_parse():
    for script in sorted((ROOT / "deploy").rglob("*.sh")):
        done = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True,
                              check=False)
        assert done.returncode == 0, f"{script}: {done.stderr}"


# --- the Dockerfile --------------------------------------------------------------------------


def dockerfile_lines() -> list[str]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_builds_a_venv_and_runs_it_unprivileged():
    lines = dockerfile_lines()
    froms = [line.split()[1:] for line in lines if line.startswith("FROM ")]
    assert froms == [["python:3.11-slim", "AS", "builder"], ["python:3.11-slim"]]
    runtime = lines[[i for i, line in enumerate(lines) if line.startswith("FROM ")][1]:]
    assert any(line.startswith("COPY --from=builder /opt/venv") for line in runtime)
    users = [line.split()[1] for line in runtime if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert [line for line in runtime if line.startswith("WORKDIR ")][-1] == "WORKDIR /app"
    text = " ".join(lines)
    assert "pip install -r requirements.txt" in text
    assert "pip install --no-deps ." in text


def test_dockerfile_copies_every_package():
    config = tomllib.loads(PYPROJECT.read_text())
    packages = {pattern.rstrip("*")
                for pattern in config["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {line.split()[1].rstrip("/") for line in dockerfile_lines()
              if line.startswith("COPY ") and "--from" not in line}
    assert packages <= copied, f"the Dockerfile does not copy {sorted(packages - copied)}"


def test_dockerignore_lets_every_copied_path_in():
    allowed = {line[1:].rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()
               if line.startswith("!")}
    assert "*" in DOCKERIGNORE.read_text().splitlines()
    for line in dockerfile_lines():
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert source.rstrip("/") in allowed, f".dockerignore leaves out {source}"


def test_images_are_named_without_a_registry(services):
    images = [service["image"] for service in services.values()]
    images += [line.split()[1] for line in dockerfile_lines() if line.startswith("FROM ")]
    for image in images:
        first, _, rest = image.partition("/")
        # registry.example/python or host:5000/x name a registry; user/name does not.
        assert not (rest and ("." in first or ":" in first or first == "localhost")), image
        assert ":" in image.rpartition("/")[2], f"{image} has no tag"
        assert not image.endswith(":latest"), image


# --- Compose v2's own parser -----------------------------------------------------------------


def compose_config(binary: Path, *args: str, env: dict[str, str] | None = None):
    # A bare environment: the file's own defaults apply, not this shell's settings.
    return subprocess.run(
        [str(binary), "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE),
         "config", *args],
        capture_output=True, text=True, timeout=120, check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT), **(env or {})},
    )


def test_compose_accepts_the_file(docker_compose):
    done = compose_config(docker_compose, "--quiet")
    assert done.returncode == 0, done.stderr


def test_compose_normalized_file(docker_compose):
    done = compose_config(docker_compose, "--format", "json")
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    assert set(services) == LONG_RUNNING | ONE_SHOT
    published = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port["host_ip"] == LOOPBACK, name
            published[int(port["published"])] = name
        for target, how in service.get("depends_on", {}).items():
            assert how["condition"] in ("service_healthy", "service_completed_successfully"), (
                f"{name} -> {target}")
    assert published == PUBLISHED
    for name in LONG_RUNNING:
        assert services[name]["healthcheck"]["test"], name
    # Defaults filled in from the file itself, as a user without a .env file gets them.
    lake = services["sink-lake"]["environment"]
    assert (lake["S3_BUCKET"], lake["SINK_BATCH_MAX_AGE_MS"]) == ("captures", "5000")
    assert services["timescaledb"]["environment"]["POSTGRES_PASSWORD"] in (
        services["migrate"]["environment"]["DATABASE_URL"])
    assert services["migrate"]["environment"]["TAPLINE_WRITER_PASSWORD"] in (
        services["sink-timescale"]["environment"]["DATABASE_URL"])


def test_compose_takes_settings_from_the_environment(docker_compose):
    done = compose_config(docker_compose, "--format", "json",
                          env={"POSTGRES_PASSWORD": "s3cret", "S3_BUCKET": "lake-test",
                               "GRAFANA_ADMIN_PASSWORD": "gr4fana"})
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    assert services["timescaledb"]["environment"]["POSTGRES_PASSWORD"] == "s3cret"
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "gr4fana"
    assert ":s3cret@timescaledb:" in services["migrate"]["environment"]["DATABASE_URL"]
    for name in ("seaweedfs", "seaweedfs-init", "sink-lake"):
        assert services[name]["environment"]["S3_BUCKET"] == "lake-test", name


# --- least privilege ---------------------------------------------------------------------------

SECRETS = {"POSTGRES_PASSWORD": "owner-pw-1", "TAPLINE_WRITER_PASSWORD": "writer-pw-2",
           "TAPLINE_READER_PASSWORD": "reader-pw-3", "S3_ACCESS_KEY_ID": "lake-key-4",
           "S3_SECRET_ACCESS_KEY": "lake-secret-5", "GRAFANA_ADMIN_PASSWORD": "grafana-pw-6"}
# Who may hold each secret; nobody else may see it anywhere in their service's definition.
HOLDERS = {
    "POSTGRES_PASSWORD": {"timescaledb", "migrate"},
    "TAPLINE_WRITER_PASSWORD": {"migrate", "sink-timescale"},
    "TAPLINE_READER_PASSWORD": {"migrate", "grafana"},
    "S3_ACCESS_KEY_ID": {"seaweedfs", "sink-lake"},
    "S3_SECRET_ACCESS_KEY": {"seaweedfs", "sink-lake"},
    "GRAFANA_ADMIN_PASSWORD": {"grafana"},
}
WRITER_LOGIN, READER_LOGIN = "tapline_sink", "tapline_grafana"


@pytest.fixture(scope="module")
def resolved(docker_compose) -> dict[str, dict]:
    """The services as Compose resolves them, with a distinct value for every secret."""
    done = compose_config(docker_compose, "--format", "json", env=SECRETS)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["services"]


def migrate_script(services: dict[str, dict]) -> str:
    """The shell script the migrate service runs, as its container gets it: `config` keeps
    Compose's escape `$$` (its output is a compose file again), the container sees `$`."""
    command = services["migrate"]["command"]
    assert command[:2] == ["sh", "-ec"], command
    return command[2].replace("$$", "$")


def test_each_secret_reaches_only_those_who_need_it(resolved):
    for name, value in SECRETS.items():
        seen = {service for service, definition in resolved.items()
                if value in json.dumps(definition)}
        assert seen == HOLDERS[name], name


def test_the_apps_and_the_proxy_get_no_credentials(resolved):
    for name in ("app_a", "app_b", "proxy"):
        env = resolved[name].get("environment", {})
        assert not [key for key in env if key == "DATABASE_URL" or key.startswith(("S3_", "AWS_"))
                    or "PASSWORD" in key or "SECRET" in key], name


def test_the_timescale_sink_logs_in_as_the_writer_and_does_not_migrate(resolved):
    env = resolved["sink-timescale"]["environment"]
    url = urlsplit(env["DATABASE_URL"])
    assert (url.username, url.password, url.hostname) == (
        WRITER_LOGIN, SECRETS["TAPLINE_WRITER_PASSWORD"], "timescaledb")
    assert env["TIMESCALE_MIGRATE"] == "false"
    # Policies are the owner's: they go with the migration.
    assert not {"TIMESCALE_COMPRESS_AFTER", "TIMESCALE_RETENTION"} & set(env)
    script = migrate_script(resolved)
    assert (f"python -m db login {WRITER_LOGIN} --group writer "
            "--password-env TAPLINE_WRITER_PASSWORD") in script
    assert '--compress-after "$TIMESCALE_COMPRESS_AFTER"' in script  # Compose's $$ became $
    owner = urlsplit(resolved["migrate"]["environment"]["DATABASE_URL"])
    assert (owner.username, owner.password) == ("postgres", SECRETS["POSTGRES_PASSWORD"])


def test_grafana_logs_in_as_a_reader(resolved):
    assert datasource()["user"] == READER_LOGIN
    assert resolved["grafana"]["environment"]["TAPLINE_READER_PASSWORD"] == SECRETS[
        "TAPLINE_READER_PASSWORD"]
    assert (f"python -m db login {READER_LOGIN} --group reader "
            "--password-env TAPLINE_READER_PASSWORD") in migrate_script(resolved)


def test_no_metrics_port_is_published(resolved):
    metrics = {int(service["environment"][key]) for service in resolved.values()
               for key in ("PROXY_METRICS_PORT", "SINK_METRICS_PORT")
               if key in service.get("environment", {})}
    assert metrics == {9101, 9102, 9103}
    published = {int(port["published"]) for service in resolved.values()
                 for port in service.get("ports", [])}
    assert not metrics & published


def seaweedfs_identities(bucket: str, key: str, secret: str) -> list[dict]:
    """The identities start.sh writes, read from its heredoc with the values filled in."""
    script = (ROOT / "deploy/seaweedfs/start.sh").read_text()
    body = script.split('<<JSON\n', 1)[1].split("\nJSON\n", 1)[0]
    for name, value in (("bucket", bucket), ("key", key), ("secret", secret)):
        body = body.replace(f"${name}", value)
    return json.loads(body)["identities"]


def test_the_lake_key_may_only_write_into_the_bucket():
    identities = {identity["name"]: identity
                  for identity in seaweedfs_identities("captures", "k", "s")}
    assert set(identities) == {"tapline-lake", "anonymous"}  # no admin identity at all
    sink = identities["tapline-lake"]
    assert sink["credentials"] == [{"accessKey": "k", "secretKey": "s"}]
    assert sink["actions"] == ["Write:captures"]
    assert identities["anonymous"]["actions"] == ["Read:captures", "List:captures"]


def test_the_migrate_service_sets_up_the_roles(resolved, postgres, tmp_path):
    # Its very script, against a real PostgreSQL: twice, as a second `up` would.
    from stack.support import fresh_database

    database = fresh_database(postgres.dsn)
    env = {**resolved["migrate"]["environment"], "DATABASE_URL": database,
           "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    for _ in range(2):
        done = subprocess.run(["sh", "-ec", migrate_script(resolved)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=180, check=False)
        assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["postgresql", "postgresql", "tapline_writer", "tapline_reader"]
    with psycopg.connect(database) as conn:
        found = conn.execute("""
            SELECT r.rolname, r.rolcanlogin, r.rolpassword LIKE 'SCRAM-SHA-256$%%',
                   pg_has_role(r.rolname, 'tapline_writer', 'MEMBER'),
                   pg_has_role(r.rolname, 'tapline_reader', 'MEMBER')
            FROM pg_authid r WHERE r.rolname IN (%s, %s) ORDER BY r.rolname""",
                             (READER_LOGIN, WRITER_LOGIN)).fetchall()
    assert found == [(READER_LOGIN, True, True, False, True),
                     (WRITER_LOGIN, True, True, True, False)]
