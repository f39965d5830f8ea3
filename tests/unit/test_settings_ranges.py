"""Every number a service reads from the environment has a range and must be finite, and a
refused value that may be a credential is never echoed (capture/settings.py, issue 16)."""

from __future__ import annotations

import pytest

from capture.settings import SettingsError, shown
from proxy.settings import ProxySettings, parse_routes
from sinks.lake import LakeSettings
from sinks.settings import LoopSettings, TimescaleSettings
from stack.pipeline import RunSettings


class Recorder(dict):
    """An environment that notes every variable asked for."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.asked: set[str] = set()

    def get(self, key, default=None):
        self.asked.add(key)
        return super().get(key, default)


LOADERS = {
    "proxy": ProxySettings.from_env,
    "timescale sink": lambda env: LoopSettings.from_env("timescale", env),
    "lake sink": lambda env: LoopSettings.from_env("lake", env),
    "timescale": TimescaleSettings.from_env,
    "lake": LakeSettings.from_env,
    "run": RunSettings.from_env,
}

PORTS = {"PROXY_METRICS_PORT", "SINK_METRICS_PORT"} | {
    f"RUN_{name}_PORT" for name in (
        "KAFKA", "POSTGRES", "S3", "APP_A", "APP_B", "PROXY_A", "PROXY_B", "PROXY_METRICS",
        "TIMESCALE_METRICS", "LAKE_METRICS")
}
DURATIONS = {"CAPTURE_SHUTDOWN_TIMEOUT_S", "KAFKA_LINGER_MS", "CAPTURE_REDACT_BUDGET_MS",
             "SINK_POLL_TIMEOUT_MS", "SINK_BATCH_MAX_AGE_MS", "SINK_RETRY_MAX_BACKOFF_S",
             "S3_TIMEOUT_S", "SINK_SESSION_TIMEOUT_MS", "SINK_HEARTBEAT_INTERVAL_MS"}
SIZES = {"CAPTURE_MAX_RECORD_BYTES", "CAPTURE_BODY_MAX_BYTES", "CAPTURE_PARAMS_BODY_MAX_BYTES",
         "CAPTURE_QUEUE_MAX_BYTES", "KAFKA_MAX_BATCH_BYTES", "SINK_BATCH_MAX_BYTES",
         "TIMESCALE_BODY_MAX_BYTES", "CAPTURE_SPOOL_MAX_BYTES"}
COUNTS = {"PROXY_WORKERS", "CAPTURE_TOPIC_PARTITIONS", "SINK_BATCH_MAX_RECORDS",
          "LAKE_GZIP_LEVEL"}
NUMBERS = PORTS | DURATIONS | SIZES | COUNTS
# Read as text, a word from a list or a flag: not numbers.
NOT_NUMBERS = {
    "PROXY_ROUTES", "PROXY_LISTEN_HOST", "PROXY_EVENT_LOOP", "KAFKA_BOOTSTRAP_SERVERS",
    "CAPTURE_TOPIC", "KAFKA_COMPRESSION", "PROXY_TRUSTED_PROXIES", "PROXY_METRICS_HOST",
    "PROXY_LOG_CONNECTIONS", "CAPTURE_REDACT", "CAPTURE_REDACT_KEY", "CAPTURE_REDACT_HEADERS",
    "CAPTURE_REDACT_FIELDS", "CAPTURE_REDACT_KEEP_NAMES", "CAPTURE_REDACT_EMAILS",
    "CAPTURE_UNSCANNED_BODIES", "CAPTURE_FORM_FILES", "CAPTURE_SPOOL_DIR", "SINK_GROUP_ID",
    "DLQ_TOPIC",
    "SINK_METRICS_HOST", "TIMESCALE_WRITE_METHOD", "TIMESCALE_MIGRATE",
    "TIMESCALE_COMPRESS_AFTER", "TIMESCALE_RETENTION", "DATABASE_URL", "S3_ENDPOINT_URL",
    "S3_BUCKET", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY", "S3_REGION", "RUN_DIR",
    "RUN_RESET",
}


def asked_by(load) -> set[str]:
    env = Recorder()
    load(env)
    return env.asked


def test_every_setting_is_known_to_this_test():
    """A new setting must be placed in a class here, so that its range is checked below."""
    asked = set().union(*(asked_by(load) for load in LOADERS.values()))
    assert asked - NUMBERS - NOT_NUMBERS == set()
    assert NUMBERS - asked == set()  # and no stale names


def loaders_of(name: str):
    return [load for load in LOADERS.values() if name in asked_by(load)]


@pytest.mark.parametrize("name", sorted(NUMBERS))
@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e400", "-1",
                                   "99999999999999999999999", "9" * 400])
def test_numbers_out_of_range_or_not_finite_are_refused(name, value):
    for load in loaders_of(name):
        with pytest.raises(SettingsError, match=f"^{name}"):
            load({name: value})


@pytest.mark.parametrize("name", sorted(PORTS))
def test_ports_stay_in_range(name):
    for load in loaders_of(name):
        for bad in ("65536", "70000", "-1"):
            with pytest.raises(SettingsError, match=name):
                load({name: bad})
        settings = load({name: "65535"})
        assert 65535 in vars_of(settings)


@pytest.mark.parametrize("name", ["PROXY_METRICS_PORT", "SINK_METRICS_PORT"])
def test_metrics_port_zero_is_off(name):
    for load in loaders_of(name):
        assert 0 in vars_of(load({name: "0"}))


@pytest.mark.parametrize("name", sorted(n for n in PORTS if n.startswith("RUN_")))
def test_run_ports_need_a_real_port(name):
    with pytest.raises(SettingsError, match=name):
        RunSettings.from_env({name: "0"})


def vars_of(settings) -> list:
    return [getattr(settings, field) for field in settings.__slots__]


def test_a_duration_that_never_ends_is_refused():
    """nan once made the flush at shutdown wait for ever."""
    for value in ("nan", "inf", "1e9"):
        with pytest.raises(SettingsError, match="CAPTURE_SHUTDOWN_TIMEOUT_S"):
            ProxySettings.from_env({"CAPTURE_SHUTDOWN_TIMEOUT_S": value})
    assert ProxySettings.from_env({"CAPTURE_SHUTDOWN_TIMEOUT_S": "2.5"}).shutdown_timeout_s == 2.5


SECRET = "s3cr3t-Pa55w0rd"


@pytest.mark.parametrize("name", sorted(NUMBERS))
def test_a_refused_number_does_not_echo_what_may_be_a_credential(name):
    for load in loaders_of(name):
        with pytest.raises(SettingsError) as refused:
            load({name: f"postgresql://owner:{SECRET}@db/tapline"})
        assert SECRET not in str(refused.value)
        assert "not shown" in str(refused.value)


def test_short_plain_values_are_shown_and_others_are_described():
    assert shown("1MB") == "'1MB'"
    assert shown(" nan ") == "'nan'"
    assert "not shown" in shown("user:password@host")
    assert "not shown" in shown("x" * 25)
    assert "not shown" in shown("AKIA1234567890ABCDEF/extra")


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        (f"app_a=http://user:{SECRET}@127.0.0.1:5100@5000", "must not hold credentials"),
        (f"app_a=http://{SECRET}@127.0.0.1:5100@5000", "must not hold credentials"),
        (f"app_a=http://127.0.0.1:5100/{SECRET}@5000", "no path, query or fragment"),
        (f"app_a=http://127.0.0.1:5100?token={SECRET}@5000", "no path, query or fragment"),
        (f"app_a=http://127.0.0.1:5100#{SECRET}@5000", "no path, query or fragment"),
        ("app_a=http://127.0.0.1:70000@5000", "port is not a number from 1 to 65535"),
        ("app_a=http://127.0.0.1:0@5000", "port is not a number from 1 to 65535"),
        ("app_a=http://127.0.0.1:port@5000", "port is not a number from 1 to 65535"),
        (f"app_a=ftp://{SECRET}:5100@5000", "must start with http:// or https://"),
        ("app_a=http://:5100@5000", "names no host"),
        ("app_a=http://bad_host!:5100@5000", "not a host name or address"),
        (f"{SECRET}:x=http://127.0.0.1:5100@5000", "route 1 is not NAME="),
        (f"app_a=http://127.0.0.1:5100@5000,b={SECRET}", "route 2 .b. is not NAME="),
    ],
)
def test_route_upstreams_are_scheme_host_port_and_errors_do_not_echo(spec, says):
    with pytest.raises(SettingsError, match=says) as refused:
        parse_routes(spec)
    assert SECRET not in str(refused.value)


@pytest.mark.parametrize(
    ("spec", "upstream"),
    [
        ("a=http://127.0.0.1:5100@5000", "http://127.0.0.1:5100"),
        ("a=http://127.0.0.1:5100/@5000", "http://127.0.0.1:5100"),
        ("a=https://app.internal@5000", "https://app.internal"),
        ("a=http://[::1]:5100@5000", "http://[::1]:5100"),
        ("app_a=http://app_a:5000@5000", "http://app_a:5000"),  # a compose service
    ],
)
def test_good_upstreams(spec, upstream):
    (route,) = parse_routes(spec)
    assert route.upstream == upstream and route.port == 5000


def test_s3_endpoint_errors_do_not_echo_it():
    with pytest.raises(SettingsError, match="S3_ENDPOINT_URL") as refused:
        LakeSettings.from_env({"S3_ENDPOINT_URL": f"s3://AKIA:{SECRET}@host"})
    assert SECRET not in str(refused.value)
