"""The lean master: the addons a reverse proxy needs, and a command line for their options only."""

import asyncio

import pytest
from mitmproxy import options

from proxy.master import CaptureMaster, LeanMaster, command_line


def built(master_class=LeanMaster):
    async def build():
        opts = options.Options()
        return master_class(opts), opts
    return asyncio.run(build())


def test_the_options_users_rely_on_are_there_and_the_left_out_ones_are_not():
    master, opts = built()
    for name in ("mode", "listen_host", "keep_host_header", "connection_strategy",
                 "stream_large_bodies", "body_size_limit", "ssl_insecure", "http2",
                 "websocket", "keep_alt_svc_header", "termlog_verbosity"):
        assert name in opts, name
    for name in ("anticache", "anticomp", "block_global", "scripts", "save_stream_file",
                 "flow_detail", "map_local", "stickycookie", "server_replay"):
        assert name not in opts, name
    names = {type(a).__name__ for a in master.addons.chain}
    assert {"Core", "Proxyserver", "NextLayer", "TlsConfig", "ErrorCheck"} <= names
    assert not names & {"Block", "ScriptLoader", "Dumper", "AntiCache", "Save"}


def test_the_capture_master_adds_the_capture_addon():
    master, _ = built(CaptureMaster)
    assert "CaptureAddon" in {type(a).__name__ for a in master.addons.chain}


def test_the_command_line_takes_mitmdumps_flags_for_the_options_that_exist():
    _, opts = built()
    parser = command_line(opts)
    args = parser.parse_args(["--mode", "reverse:http://127.0.0.1:9@5000", "-q", "-k",
                              "--listen-host", "::1", "--set", "connection_strategy=lazy"])
    assert args.mode == ["reverse:http://127.0.0.1:9@5000"]
    assert args.ssl_insecure and args.quiet and args.listen_host == "::1"
    assert args.setoptions == ["connection_strategy=lazy"]


@pytest.mark.parametrize("flag", [["--anticache"], ["-s", "x.py"], ["-w", "flows"],
                                  ["--flow-detail", "2"], ["filter"]])
def test_flags_of_left_out_addons_are_refused(flag, capsys):
    _, opts = built()
    with pytest.raises(SystemExit):
        command_line(opts).parse_args(flag)
    assert "unrecognized arguments" in capsys.readouterr().err


class Recorder:
    def __init__(self, name, calls, fail=None):
        self.name, self.calls, self.fail = name, calls, fail

    def requestheaders(self, flow):
        self.calls.append((self.name, flow))
        if self.fail:
            raise self.fail


class Parent:
    name = "parent"

    def __init__(self, calls):
        self.addons = [Recorder("child", calls)]


def test_hook_table_calls_what_mitmproxy_calls_in_its_order(caplog):
    from mitmproxy import exceptions
    from mitmproxy.proxy.layers.http import HttpRequestHeadersHook

    async def scenario():
        calls = []
        master = LeanMaster(options.Options())
        master.addons.add(Recorder("a", calls), Parent(calls),
                          Recorder("b", calls, fail=ValueError("boom")), Recorder("c", calls))
        await master.addons.trigger_event(HttpRequestHeadersHook("flow"))
        first = list(calls)
        # An addon added later is called too: the table is rebuilt.
        master.addons.add(Recorder("d", calls))
        calls.clear()
        master.addons.trigger(HttpRequestHeadersHook("flow"))
        second = list(calls)
        master.addons.add(Recorder("halt", calls, fail=exceptions.AddonHalt()))
        master.addons.add(Recorder("after", calls))
        calls.clear()
        await master.addons.trigger_event(HttpRequestHeadersHook("flow"))
        return first, second, list(calls)

    first, second, third = asyncio.run(scenario())
    assert first == [("a", "flow"), ("child", "flow"), ("b", "flow"), ("c", "flow")]
    assert second == [*first, ("d", "flow")]
    assert [name for name, _ in third] == ["a", "child", "b", "c", "d", "halt"]
    assert "Addon error: boom" in caplog.text
