"""App A on Flask's test client, talking to a real app B served on a loopback port."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from flask import Flask, Response

from apps import app_a, app_b


@pytest.fixture
def app_b_url(serve_wsgi, tmp_path: Path) -> str:
    return serve_wsgi(app_b.create_app(app_b.Settings(db_path=tmp_path / "users.sqlite3")))


@pytest.fixture
def client(app_b_url: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("APP_B_URL", app_b_url)
    return app_a.create_app().test_client()


def _client_for(app_b_url: str, timeout_s: float = 5.0):
    settings = app_a.Settings(app_b_url=app_b_url, app_b_timeout_s=timeout_s)
    return app_a.create_app(settings).test_client()


def test_hello(client):
    resp = client.get("/hello")
    assert resp.status_code == 200
    assert resp.mimetype == "text/plain"
    assert resp.get_data(as_text=True) == "Hello there"


def test_jobs_with_a_known_token(client):
    resp = client.post("/jobs", headers={"Authorization": "mytoken"})
    assert resp.status_code == 200
    assert resp.mimetype == "text/plain"
    assert resp.get_data(as_text=True) == "Jobs:\nTitle: Devops\nDescription: Awesome\n"


def test_jobs_with_an_unknown_token_is_401(client):
    resp = client.post("/jobs", headers={"Authorization": "not-a-token"})
    assert resp.status_code == 401
    assert resp.mimetype == "text/plain"


@pytest.mark.parametrize("headers", [{}, {"Authorization": ""}, {"Authorization": "   "}])
def test_jobs_without_a_token_is_401(client, headers):
    resp = client.post("/jobs", headers=headers)
    assert resp.status_code == 401
    assert "Authorization" in resp.get_data(as_text=True)


def test_jobs_when_app_b_is_unreachable_is_502(free_port):
    client = _client_for(f"http://127.0.0.1:{free_port()}")
    resp = client.post("/jobs", headers={"Authorization": "mytoken"})
    assert resp.status_code == 502
    assert resp.mimetype == "text/plain"


def test_jobs_when_app_b_fails_is_502(serve_wsgi):
    broken = Flask("broken_app_b")
    broken.post("/auth")(lambda: Response("boom", status=500))
    resp = _client_for(serve_wsgi(broken)).post("/jobs", headers={"Authorization": "mytoken"})
    assert resp.status_code == 502


def test_jobs_when_app_b_is_too_slow_is_502(serve_wsgi):
    slow = Flask("slow_app_b")

    @slow.post("/auth")
    def auth() -> str:
        time.sleep(1.0)
        return "density"

    started = time.monotonic()
    resp = _client_for(serve_wsgi(slow), timeout_s=0.2).post(
        "/jobs", headers={"Authorization": "mytoken"}
    )
    assert resp.status_code == 502
    assert time.monotonic() - started < 0.9


def test_get_jobs_is_405(client):
    assert client.get("/jobs").status_code == 405


def test_unknown_path_is_404(client):
    assert client.get("/nope").status_code == 404


def test_one_connection_to_app_b_is_reused():
    # Werkzeug's server closes every connection, so this stand-in for app B speaks keep-alive
    # HTTP/1.1 itself and notes which client ports it sees.
    client_ports: set[int] = set()

    class KeepAliveAuth(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            client_ports.add(self.client_address[1])
            self.send_response(200)
            self.send_header("Content-Length", "7")
            self.end_headers()
            self.wfile.write(b"density")

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), KeepAliveAuth)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        client = _client_for(f"http://127.0.0.1:{server.server_port}")
        for _ in range(10):
            assert client.post("/jobs", headers={"Authorization": "mytoken"}).status_code == 200
    finally:
        server.shutdown()
        server.server_close()
    assert len(client_ports) == 1


def test_settings_from_env(monkeypatch):
    monkeypatch.setenv("APP_B_URL", "http://app-b.example:8080/")
    monkeypatch.setenv("APP_B_TIMEOUT_S", "2.5")
    assert app_a.Settings.from_env() == app_a.Settings("http://app-b.example:8080", 2.5)


def test_settings_defaults(monkeypatch):
    monkeypatch.delenv("APP_B_URL", raising=False)
    monkeypatch.delenv("APP_B_TIMEOUT_S", raising=False)
    assert app_a.Settings.from_env() == app_a.Settings("http://127.0.0.1:5001", 5.0)


@pytest.mark.parametrize("raw", ["soon", "0", "-1", "nan", "inf"])
def test_bad_timeout_is_refused_with_its_name(monkeypatch, raw):
    monkeypatch.setenv("APP_B_TIMEOUT_S", raw)
    with pytest.raises(ValueError, match="APP_B_TIMEOUT_S"):
        app_a.Settings.from_env()
