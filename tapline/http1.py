"""A lean HTTP/1.1 client for `tapline replay`: requests sent as bytes built once, answers read
only as far as the status and the framing, connections kept alive and reused.

Why not aiohttp: it costs the replayer about 600 µs of CPU per request against the sample
apps (their gunicorn sync workers close every connection), and on a 2-core machine every
microsecond the replayer spends is taken from the service under test; this client spends a
fraction of that (docs/performance.md). It does only what a replay needs: one request at a
time per connection, Content-Length, chunked and read-until-close bodies, 1xx answers
skipped, no body for HEAD, 204 and 304; http, and https with the system's CAs.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.x as this client reads it."""


class _Connection(asyncio.Protocol):
    __slots__ = (
        "buffer",
        "chunked",
        "closed",
        "head",
        "head_request",
        "keep_alive",
        "remaining",
        "status",
        "transport",
        "until_close",
        "waiter",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.head = True  # reading the status line and headers
        self.remaining = 0
        self.chunked = False
        self.until_close = False
        self.keep_alive = True
        self.head_request = False

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            if self.until_close and not self.head and exc is None:
                waiter.set_result(self.status)
            else:
                waiter.set_exception(exc or ConnectionResetError("server closed the connection"))

    def send(self, data: bytes, head_request: bool) -> asyncio.Future:
        self._reset()
        self.head_request = head_request
        self.buffer.clear()
        self.waiter = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(data)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:
            return  # nothing asked: a stray byte after an answer; the connection is dropped
        self.buffer += data
        try:
            self._parse()
        except ProtocolError as e:
            waiter, self.waiter = self.waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_exception(e)
            self.keep_alive = False
            assert self.transport is not None
            self.transport.close()

    def _parse(self) -> None:
        buf = self.buffer
        while self.head:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 65536:
                    raise ProtocolError("response headers over 64 KiB")
                return
            lines = bytes(buf[:end]).split(b"\r\n")
            del buf[:end + 4]
            parts = lines[0].split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
                raise ProtocolError("not an HTTP/1.x status line")
            status = int(parts[1])
            if 100 <= status < 200 and status != 101:
                continue  # 100 Continue and the like: the real answer follows
            self.status = status
            self.head = False
            length = None
            keep_alive = parts[0] == b"HTTP/1.1"
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    try:
                        length = int(value.strip())
                    except ValueError:
                        raise ProtocolError("Content-Length is no number") from None
                elif name == b"transfer-encoding":
                    self.chunked = b"chunked" in value.lower()
                elif name == b"connection":
                    token = value.strip().lower()
                    keep_alive = b"close" not in token and (keep_alive or b"keep-alive" in token)
            self.keep_alive = keep_alive
            if self.head_request or status in (204, 304) or status == 101:
                self.remaining = 0
            elif self.chunked:
                self.remaining = -1
            elif length is not None:
                self.remaining = length
            else:
                self.until_close = True
                self.keep_alive = False
        if self.until_close:
            buf.clear()
            return
        if self.chunked:
            while True:
                if self.remaining > 0:  # inside a chunk (and its CRLF)
                    take = min(self.remaining, len(buf))
                    del buf[:take]
                    self.remaining -= take
                    if self.remaining:
                        return
                line_end = buf.find(b"\r\n")
                if line_end < 0:
                    return
                size_text = bytes(buf[:line_end]).split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise ProtocolError("bad chunk size") from None
                if size == 0:
                    trailer_end = buf.find(b"\r\n\r\n", line_end)
                    if trailer_end < 0:
                        return
                    del buf[:trailer_end + 4]
                    break
                del buf[:line_end + 2]
                self.remaining = size + 2
        else:
            take = min(self.remaining, len(buf))
            del buf[:take]
            self.remaining -= take
            if self.remaining:
                return
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(self.status)


class Client:
    """Connections per (host, port), reused while the server keeps them alive."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[_Connection]] = defaultdict(list)
        self._all: set[_Connection] = set()

    async def request(self, host: str, port: int, data: bytes, *, head: bool = False,
                      tls: bool = False) -> int:
        """Send `data` (a whole HTTP/1.1 request) and return the answer's status; raises
        OSError for a connection that fails, ProtocolError for an answer it cannot read.

        A kept connection the server closed meanwhile (its keep-alive timeout) is met by a
        reset before any answer: the request then goes once more, on a new connection."""
        idle = self._idle[(host, port)]
        while idle:
            conn = idle.pop()
            if conn.closed:
                self._drop(conn)  # the server closed it while it was idle
                continue
            try:
                return await self._exchange(conn, idle, data, head)
            except ConnectionResetError:
                if conn.status or not conn.head:
                    raise
            break  # a fresh connection, below
        loop = asyncio.get_running_loop()
        if tls:
            import ssl

            _, conn = await loop.create_connection(_Connection, host, port,
                                                   ssl=ssl.create_default_context(),
                                                   server_hostname=host)
        else:
            _, conn = await loop.create_connection(_Connection, host, port)
        self._all.add(conn)
        return await self._exchange(conn, idle, data, head)

    async def _exchange(self, conn: _Connection, idle: list, data: bytes, head: bool) -> int:
        try:
            status = await conn.send(data, head)
        except BaseException:
            self._drop(conn)
            raise
        if conn.keep_alive and not conn.closed:
            idle.append(conn)
        else:
            self._drop(conn)
        return status

    def _drop(self, conn: _Connection) -> None:
        self._all.discard(conn)
        if conn.transport is not None and not conn.closed:
            conn.transport.close()

    def close(self) -> None:
        for conn in list(self._all):
            self._drop(conn)
        self._idle.clear()
