"""Proxy settings from the environment: defaults, routes, and one clear error per mistake."""

import pytest

from proxy.__main__ import mitmdump_args
from proxy.settings import (
    ProxySettings,
    Route,
    SettingsError,
    parse_listen_hosts,
    parse_routes,
)


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
    assert settings.listen_hosts == ("127.0.0.1",)


def test_routes_become_mitmdump_modes():
    args = mitmdump_args(ProxySettings.from_env({}), ["--set", "x=1"])
    assert args[:4] == ["--mode", "reverse:http://127.0.0.1:5100@5000",
                        "--mode", "reverse:http://127.0.0.1:5101@5001"]
    assert "keep_host_header=true" in args
    assert args[-2:] == ["--set", "x=1"]
    assert args[args.index("--listen-host") + 1] == "127.0.0.1"


def test_every_listen_host_gets_every_route():
    env = {"PROXY_LISTEN_HOST": "127.0.0.1, ::1", "PROXY_ROUTES": "a=http://127.0.0.1:9@5000"}
    args = mitmdump_args(ProxySettings.from_env(env), [])
    modes = [args[i + 1] for i, arg in enumerate(args) if arg == "--mode"]
    # mitmproxy reads the listen host up to the last colon: an IPv6 address needs no brackets
    assert modes == ["reverse:http://127.0.0.1:9@5000", "reverse:http://127.0.0.1:9@::1:5000"]
    assert args[args.index("--listen-host") + 1] == "127.0.0.1"


@pytest.mark.parametrize(
    ("spec", "hosts"),
    [
        ("0.0.0.0", ("0.0.0.0",)),
        ("127.0.0.1,::1", ("127.0.0.1", "::1")),
        (" 0:0::1 , localhost ", ("::1", "localhost")),  # canonical spelling
    ],
)
def test_listen_hosts(spec, hosts):
    assert parse_listen_hosts(spec) == hosts


def test_a_blank_listen_host_is_loopback_not_every_interface():
    assert ProxySettings.from_env({"PROXY_LISTEN_HOST": " "}).listen_hosts == ("127.0.0.1",)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (" , ", "names no address"),
        ("127.0.0.1,127.0.0.1", "listed twice"),
        ("::1,0::1", "listed twice"),
        ("[::1]", "neither an IP address nor a host name"),
        ("127.0.0.1:5000", "neither an IP address nor a host name"),
        ("host name", "neither an IP address nor a host name"),
    ],
)
def test_bad_listen_hosts(spec, message):
    with pytest.raises(SettingsError, match=message):
        ProxySettings.from_env({"PROXY_LISTEN_HOST": spec})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("app_a=127.0.0.1:5100@5000", "must start with http:// or https://"),
        ("app_a 127.0.0.1:5100@5000", "is not NAME=http://HOST:PORT@LISTEN_PORT"),
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
        ({"CAPTURE_SHUTDOWN_TIMEOUT_S": "-1"}, "must be at least 0"),
    ],
)
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(SettingsError, match=message):
        ProxySettings.from_env(env)


def test_the_proxy_sets_glibcs_mmap_threshold_unless_told_otherwise(monkeypatch):
    from proxy.__main__ import keep_big_buffers_off_the_heap
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert keep_big_buffers_off_the_heap()  # Debian's Python runs on glibc
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert not keep_big_buffers_off_the_heap()


def test_workers_default_to_the_cpus_the_process_may_use():
    import os

    assert ProxySettings.from_env({}).workers == len(os.sched_getaffinity(0))
    assert ProxySettings.from_env({"PROXY_WORKERS": "3"}).workers == 3
    assert ProxySettings.from_env({"PROXY_WORKERS": " "}).workers >= 1  # blank: the default
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(SettingsError, match="PROXY_WORKERS"):
            ProxySettings.from_env({"PROXY_WORKERS": bad})


def test_event_loop_is_uvloop_or_asyncio():
    assert ProxySettings.from_env({}).event_loop == "uvloop"
    assert ProxySettings.from_env({"PROXY_EVENT_LOOP": "AsyncIO"}).event_loop == "asyncio"
    with pytest.raises(SettingsError, match="PROXY_EVENT_LOOP"):
        ProxySettings.from_env({"PROXY_EVENT_LOOP": "trio"})
