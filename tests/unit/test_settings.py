"""Proxy settings from the environment: defaults, routes, and one clear error per mistake."""

import pytest

from proxy.__main__ import mitmdump_args
from proxy.settings import ProxySettings, Route, SettingsError, parse_routes


def test_defaults_suit_one_host():
    settings = ProxySettings.from_env({})
    assert settings.routes == (
        Route("app_a", "http://127.0.0.1:5100", 5000),
        Route("app_b", "http://127.0.0.1:5101", 5001),
    )
    assert settings.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert settings.topic == "http-captures"
    assert settings.body_max_bytes == 1 << 20
    assert settings.trusted_proxies == ()


def test_routes_become_mitmdump_modes():
    args = mitmdump_args(ProxySettings.from_env({}), ["--set", "x=1"])
    assert args[:4] == ["--mode", "reverse:http://127.0.0.1:5100@5000",
                        "--mode", "reverse:http://127.0.0.1:5101@5001"]
    assert "keep_host_header=true" in args
    assert args[-2:] == ["--set", "x=1"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("app_a=127.0.0.1:5100@5000", "is not NAME=http://HOST:PORT@LISTEN_PORT"),
        ("app_a=http://a@5000,app_b=http://b@5000", "used twice"),
        ("app_a=http://a@70000", "out of range"),
        (" , ", "names no route"),
    ],
)
def test_bad_routes(spec, message):
    with pytest.raises(SettingsError, match=message):
        parse_routes(spec)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CAPTURE_BODY_MAX_BYTES": "1MB"}, "CAPTURE_BODY_MAX_BYTES='1MB' is not a whole number"),
        ({"CAPTURE_TOPIC_PARTITIONS": "0"}, "below the minimum 1"),
        ({"KAFKA_COMPRESSION": "brotli"}, "KAFKA_COMPRESSION='brotli'"),
        ({"PROXY_TRUSTED_PROXIES": "10.0.0.0/8,nope"}, "PROXY_TRUSTED_PROXIES"),
        ({"CAPTURE_QUEUE_MAX_BYTES": "1000"}, "must hold at least one record"),
        ({"CAPTURE_SHUTDOWN_TIMEOUT_S": "-1"}, "negative"),
    ],
)
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(SettingsError, match=message):
        ProxySettings.from_env(env)
