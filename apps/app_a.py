"""Sample app A: says hello, and lists jobs to callers whose token app B knows.

    GET  /hello   -> 200 "Hello there".
    POST /jobs    header ``Authorization: <token>``; app A asks app B ``POST /auth`` with
                  ``token=<token>`` -> 200 with the job list when app B answers 200, 401 when the
                  header is missing or app B answers 401, 502 when app B is unreachable, too slow
                  or answers anything else.

Settings (read from the environment once, in ``Settings.from_env``):

    APP_B_URL         app B's base URL; default ``http://127.0.0.1:5001``, the proxy in front of
                      app B, so the call from A to B is captured too.
    APP_B_TIMEOUT_S   seconds to wait for app B (connect and read, each); default 5.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass

import requests
from flask import Flask, Response, request

DEFAULT_APP_B_URL = "http://127.0.0.1:5001"
DEFAULT_APP_B_TIMEOUT_S = 5.0

JOBS_BODY = "Jobs:\nTitle: Devops\nDescription: Awesome\n"

_BAD_TIMEOUT = "APP_B_TIMEOUT_S must be a positive number of seconds, got {!r}"


@dataclass(frozen=True)
class Settings:
    """App A's settings.

    ``app_b_url``: app B's base URL, without the path (default ``http://127.0.0.1:5001``).
    ``app_b_timeout_s``: seconds to wait for app B to connect and to answer (default 5).
    """

    app_b_url: str = DEFAULT_APP_B_URL
    app_b_timeout_s: float = DEFAULT_APP_B_TIMEOUT_S

    def __post_init__(self) -> None:
        timeout_s = self.app_b_timeout_s
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(_BAD_TIMEOUT.format(timeout_s))

    @classmethod
    def from_env(cls) -> Settings:
        url = os.environ.get("APP_B_URL", "").strip() or DEFAULT_APP_B_URL
        raw_timeout = os.environ.get("APP_B_TIMEOUT_S", "").strip()
        try:
            timeout_s = float(raw_timeout) if raw_timeout else DEFAULT_APP_B_TIMEOUT_S
        except ValueError:
            raise ValueError(_BAD_TIMEOUT.format(raw_timeout)) from None
        return cls(app_b_url=url.rstrip("/"), app_b_timeout_s=timeout_s)


class AppBUnavailable(Exception):
    """App B could not be reached in time, or gave an answer that is neither 200 nor 401."""


class AppBClient:
    """Asks app B who owns a token, over one pooled HTTP session per process."""

    def __init__(self, base_url: str, timeout_s: float) -> None:
        self._auth_url = f"{base_url.rstrip('/')}/auth"
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._session: requests.Session | None = None
        self._session_pid: int | None = None

    def _get_session(self) -> requests.Session:
        # Made lazily and remade after a fork: under `gunicorn --preload` the app is built in the
        # master, and pooled sockets must not be shared between workers.
        with self._lock:
            if self._session is None or self._session_pid != os.getpid():
                self._session = requests.Session()
                self._session_pid = os.getpid()
            return self._session

    def username_for(self, token: str) -> str | None:
        """The username app B gives for ``token``, or None if app B does not know the token.

        Raises ``AppBUnavailable`` for anything else: no connection, timeout, other status.
        """
        try:
            resp = self._get_session().post(
                self._auth_url, data={"token": token}, timeout=self._timeout_s
            )
        except requests.RequestException as exc:
            raise AppBUnavailable(f"POST {self._auth_url} failed: {exc}") from exc
        if resp.status_code == 200:
            return resp.text
        if resp.status_code == 401:
            return None
        raise AppBUnavailable(f"POST {self._auth_url} answered {resp.status_code}")


def _text(body: str, status: int) -> Response:
    return Response(body, status=status, mimetype="text/plain")


def create_app(settings: Settings | None = None) -> Flask:
    """Build app A; ``settings`` default to the environment."""
    settings = settings or Settings.from_env()
    app_b = AppBClient(settings.app_b_url, settings.app_b_timeout_s)

    app = Flask(__name__)

    @app.get("/hello")
    def hello() -> Response:
        return _text("Hello there", 200)

    @app.post("/jobs")
    def jobs() -> Response:
        token = request.headers.get("Authorization", "").strip()
        if not token:
            return _text("missing Authorization header\n", 401)
        try:
            username = app_b.username_for(token)
        except AppBUnavailable as exc:
            app.logger.warning("cannot check token with app B: %s", exc)
            return _text("cannot check the token: app B is unavailable\n", 502)
        if username is None:
            return _text("unknown token\n", 401)
        return _text(JOBS_BODY, 200)

    return app


app = create_app()
