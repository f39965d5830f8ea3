"""The capture proxy's mitmproxy master: only the addons a capturing reverse proxy needs.

mitmdump's `DumpMaster` loads about thirty addons (`mitmproxy.addons.default_addons()` plus the
dumper, keep-serving, read-from-stdin and error check), and mitmproxy calls every one of them for
every event of every flow, whether it has a hook for it or not. Most of them are for a user at an
interactive or forward proxy (anticache, stickycookie, map_local, server replay, HAR export...).
`bench/profile_proxy.py --addons` measures what each one costs; docs/decisions.md says what
was left out and why.

What is kept is what a reverse proxy in front of an app needs: listeners for every mode and
address (proxyserver), the layers and HTTP/2 (core, next_layer), TLS to an `https://` upstream
(tlsconfig), name resolution (dns_resolver), refusing h2c upgrades mitmproxy cannot carry
(disable_h2c), Alt-Svc headers that point at the proxy, not past it (update_alt_svc), the
terminal log and the startup error check. Options belong to the addons that define them, so a
`--set` for a left-out addon's option is refused by name at startup, never ignored.
"""

from __future__ import annotations

import argparse
import inspect
import logging

from mitmproxy import addonmanager, exceptions, hooks, master, options
from mitmproxy.addons import (
    core,
    disable_h2c,
    dns_resolver,
    errorcheck,
    next_layer,
    proxyserver,
    termlog,
    tlsconfig,
    update_alt_svc,
)
from mitmproxy.tools import cmdline


def lean_addons() -> list:
    return [
        core.Core(),
        proxyserver.Proxyserver(),
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
        dns_resolver.DnsResolver(),
        disable_h2c.DisableH2C(),
        update_alt_svc.UpdateAltSvc(),
        errorcheck.ErrorCheck(),
    ]


class HookTable(addonmanager.AddonManager):
    """mitmproxy's addon manager, with each event's hooks looked up once.

    mitmproxy's own walks every addon (and its children) for every event, in a
    `contextlib` context manager each, asking each for a method of the event's name: about
    ten addons and eight events per exchange, for the two or three methods that exist. Here
    the methods an event calls are found the first time it fires and kept until an addon is
    added or removed. What a call does is mitmproxy's: the addons in their order, an error
    logged as mitmproxy logs it and the next addon called, AddonHalt ending the event.
    """

    def __init__(self, master_) -> None:
        super().__init__(master_)
        self._table: dict[str, list[list]] = {}

    def register(self, addon):
        self._table.clear()
        return super().register(addon)

    def remove(self, addon) -> None:
        self._table.clear()
        super().remove(addon)

    def clear(self) -> None:
        self._table.clear()
        super().clear()

    def _hooks(self, event: hooks.Hook) -> list[list]:
        """Per addon in the chain that has any, its (and its children's) methods for `event`."""
        found = self._table.get(event.name)
        if found is None:
            found = []
            for addon in self.chain:
                methods = [func for _owner, func in self._iter_hooks(addon, event)]
                if methods:
                    found.append(methods)
            self._table[event.name] = found
        return found

    async def trigger_event(self, event: hooks.Hook) -> None:
        args = event.args()
        for methods in self._hooks(event):
            try:
                for func in methods:
                    result = func(*args)
                    if result is not None and inspect.isawaitable(result):
                        await result
            except Exception as e:
                if _halts(e):
                    return

    def trigger(self, event: hooks.Hook) -> None:
        args = event.args()
        for methods in self._hooks(event):
            try:
                for func in methods:
                    if inspect.iscoroutinefunction(func):
                        raise exceptions.AddonManagerError(
                            f"Async handler {event.name} ({func}) cannot be called from "
                            "sync context")
                    func(*args)
            except Exception as e:
                if _halts(e):
                    return


def _halts(error: Exception) -> bool:
    """What an addon's exception does to an event, as mitmproxy's `safecall` has it:
    AddonHalt ends the event (True), OptionsError goes up, any other is logged and the next
    addon is called (False). Called while `error` is being handled."""
    if isinstance(error, exceptions.AddonHalt):
        return True
    with addonmanager.safecall():  # re-raises OptionsError; logs the rest
        raise
    return False


class LeanMaster(master.Master):
    """A master with `lean_addons()` and the terminal log, on a `HookTable`."""

    def __init__(self, opts: options.Options, **kwargs) -> None:
        super().__init__(opts, with_termlog=False, **kwargs)
        self.addons = HookTable(self)
        self._termlog_addon = termlog.TermLog()
        self.addons.add(self._termlog_addon)
        self.addons.add(*lean_addons())

    async def run(self) -> None:
        # mitmproxy keeps a `--set` (or a config.yaml entry) it does not know for an addon
        # that may load later; none does here, so it is a mistake: the error check stops.
        if self.options.deferred:
            logging.error("unknown mitmproxy option%s: %s (the proxy runs only the addons it "
                          "needs; see docs/decisions.md)",
                          "s" if len(self.options.deferred) > 1 else "",
                          ", ".join(sorted(self.options.deferred)))
        await super().run()


class CaptureMaster(LeanMaster):
    """The lean master with the capture addon."""

    def __init__(self, opts: options.Options, **kwargs) -> None:
        super().__init__(opts, **kwargs)
        from proxy import http1
        from proxy.addon import CaptureAddon  # imports mitmproxy's addon API; only here

        http1.install()  # `Connection: Keep-Alive` keeps the connection, as the app says
        self.addons.add(CaptureAddon())


class _DefinedOnly:
    """mitmdump's command line, with a flag only for the options this master defines: the
    flags of left-out addons (`--anticache`, `-s`, `-w`...) are refused as unknown."""

    def __init__(self, opts: options.Options) -> None:
        self.opts = opts

    def make_parser(self, parser, name: str, **kwargs) -> None:
        if name in self.opts:
            self.opts.make_parser(parser, name, **kwargs)


def command_line(opts: options.Options) -> argparse.ArgumentParser:
    """The parser `mitmproxy.tools.main.run` asks for: mitmdump's, less what is not here."""
    parser = argparse.ArgumentParser(prog="python -m proxy", usage="%(prog)s [options]")
    cmdline.common_options(parser, _DefinedOnly(opts))
    return parser
