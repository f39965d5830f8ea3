"""The replay's HTTP/1.1 client (tapline/http1.py) against a raw server on loopback that answers
with each framing a server may use: Content-Length, chunked (split anywhere), read until
close, 100 Continue first, no body for HEAD and 204, and a kept connection the server closed
meanwhile. What matters: the status is right, the connection is reused only when it may be,
and the next answer on it is not confused with the last one's body."""

from __future__ import annotations

import asyncio

import pytest

from tapline.http1 import Client, ProtocolError

ANSWERS = {
    b"/length": [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"],
    b"/chunked": [b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhe",
                  b"llo\r\n3;ext=1\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n"],
    b"/close": [b"HTTP/1.1 203 OK\r\n\r\nuntil the end", None],
    b"/continue": [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 OK\r\nContent-Length: 2\r\n\r\nok"],
    b"/head": [b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n"],
    b"/empty": [b"HTTP/1.1 204 No Content\r\n\r\n"],
    b"/old": [b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx"],
    b"/bye": [b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", "drop"],
    b"/junk": [b"SMTP ready\r\n\r\n"],
}


async def serve(connections: list[int]):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ")[1]
                for part in ANSWERS[path]:
                    if part is None or part == "drop":
                        writer.close()
                        return
                    writer.write(part)
                    await writer.drain()
                    await asyncio.sleep(0.001)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def request(path: bytes, method: bytes = b"GET") -> bytes:
    return method + b" " + path + b" HTTP/1.1\r\nHost: t\r\n\r\n"


def test_each_framing_gives_its_status_and_keeps_the_connection_when_it_may():
    async def main():
        connections: list[int] = []
        server, port = await serve(connections)
        client = Client()
        try:
            statuses = []
            for path in (b"/length", b"/chunked", b"/continue", b"/length", b"/empty"):
                statuses.append(await client.request("127.0.0.1", port, request(path)))
            statuses.append(await client.request("127.0.0.1", port, request(b"/head", b"HEAD"),
                                                 head=True))
            statuses.append(await client.request("127.0.0.1", port, request(b"/length")))
            kept = len(connections)
            statuses.append(await client.request("127.0.0.1", port, request(b"/close")))
            statuses.append(await client.request("127.0.0.1", port, request(b"/old")))
            statuses.append(await client.request("127.0.0.1", port, request(b"/length")))
            return statuses, kept, len(connections)
        finally:
            client.close()
            server.close()

    statuses, kept, total = asyncio.run(main())
    assert statuses == [200, 201, 202, 200, 204, 200, 200, 203, 200, 200]
    assert kept == 1  # all of those on one connection
    assert total == 3  # a new one after the read-until-close answer, and after HTTP/1.0


def test_a_kept_connection_the_server_closed_is_not_used_again():
    async def main():
        connections: list[int] = []
        server, port = await serve(connections)
        client = Client()
        try:
            first = await client.request("127.0.0.1", port, request(b"/bye"))
            await asyncio.sleep(0.05)  # the server closes it after its answer
            second = await client.request("127.0.0.1", port, request(b"/length"))
            return first, second, len(connections), len(client._all)
        finally:
            client.close()
            server.close()

    assert asyncio.run(main()) == (200, 200, 2, 1)  # the closed one is forgotten


def test_an_answer_that_is_not_http_is_a_protocol_error_and_refused_is_an_os_error():
    async def main():
        server, port = await serve([])
        client = Client()
        try:
            with pytest.raises(ProtocolError):
                await client.request("127.0.0.1", port, request(b"/junk"))
        finally:
            server.close()
        await server.wait_closed()
        with pytest.raises(ConnectionRefusedError):
            await Client().request("127.0.0.1", port, request(b"/length"))

    asyncio.run(main())
