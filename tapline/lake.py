"""Questions to the S3 lake in SQL: DuckDB reads the gzip NDJSON objects where they lie.

`query(settings, sql, scope)` runs `sql` with a view named `captures` over the lake: one row
per capture, the record's fields as columns (`started_at`, `ended_at` as UTC timestamps;
`request` and `response` as structs) plus `date`, `hour` and `ip` taken from the object's key
and `filename`, the object; a record that two objects hold is one row. A `Scope` (date, hour,
ip) narrows the objects DuckDB lists and reads to one prefix, which is what makes a question
about one hour or one client cheap.

DuckDB talks to S3 through its httpfs extension, loaded from the `duckdb-extension-httpfs`
package (DuckDB cannot download extensions where only package registries are reachable).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date as Date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from capture.lake_layout import SUFFIX, UNKNOWN_IP, ip_segment
from sinks.lake import LakeSettings


class LakeError(Exception):
    """A known failure of a lake question, said in one line."""


class BadScope(LakeError):
    """A date, hour or IP that cannot name a part of the lake."""


class BadQuery(LakeError):
    """DuckDB refused the SQL (syntax, unknown column, wrong types)."""


class LakeUnreachable(LakeError):
    """S3 did not answer, refused the credentials, or has no such bucket."""


# The record's fields as DuckDB types (docs/record.md). Stating them, rather than letting
# DuckDB guess from a sample, keeps one schema for every object whatever its records hold.
_BODY = ("body VARCHAR, body_encoding VARCHAR, body_size BIGINT, body_truncated BOOLEAN, "
         "content_encoding VARCHAR, body_withheld VARCHAR, body_digest VARCHAR")
COLUMNS = {
    "v": "INTEGER",
    "id": "VARCHAR",
    "app": "VARCHAR",
    "started_at": "TIMESTAMPTZ",
    "ended_at": "TIMESTAMPTZ",
    "duration_ms": "DOUBLE",
    "client_ip": "VARCHAR",
    "client_port": "INTEGER",
    "request": (
        'STRUCT(method VARCHAR, scheme VARCHAR, host VARCHAR, port INTEGER, path VARCHAR, '
        '"query" VARCHAR, params STRUCT("query" VARCHAR[][], form VARCHAR[][], "json" JSON), '
        f"http_version VARCHAR, headers VARCHAR[][], {_BODY})"
    ),
    "response": (
        "STRUCT(status_code INTEGER, reason VARCHAR, http_version VARCHAR, "
        f"headers VARCHAR[][], {_BODY})"
    ),
    "error": "VARCHAR",
    "redacted": "BOOLEAN",
}


@dataclass(frozen=True, slots=True)
class Scope:
    """A part of the lake: a day, an hour of it (UTC) and a client IP; None means all."""

    date: str | None = None
    hour: int | None = None
    ip: str | None = None

    @classmethod
    def of(cls, date: str | None = None, hour: int | str | None = None,
           ip: str | None = None) -> Scope:
        """A checked scope; raises BadScope with what is wrong."""
        if date is not None:
            try:
                date = Date.fromisoformat(date).isoformat()
            except ValueError:
                raise BadScope(f"--date {date!r}: use YYYY-MM-DD") from None
        if hour is not None:
            try:
                hour = int(hour)
            except ValueError:
                raise BadScope(f"--hour {hour!r}: use a whole number from 0 to 23") from None
            if not 0 <= hour <= 23:
                raise BadScope(f"--hour {hour}: use a whole number from 0 to 23")
        if ip is not None and ip != UNKNOWN_IP:
            segment = ip_segment(ip)
            if segment == UNKNOWN_IP:
                raise BadScope(f"--ip {ip!r} is not an IP address (or `{UNKNOWN_IP}`)")
            ip = segment
        return cls(date, hour, ip)

    def prefix(self) -> str:
        """The longest key prefix this scope fixes ("" for the whole lake)."""
        parts = []
        for part in (self.date, None if self.hour is None else f"{self.hour:02d}", self.ip):
            if part is None:
                break
            parts.append(part)
        return "".join(f"{p}/" for p in parts)

    def glob(self, bucket: str) -> str:
        """The objects of this scope as a glob DuckDB expands (it lists only the prefix)."""
        date = self.date or "*"
        hour = "*" if self.hour is None else f"{self.hour:02d}"
        ip = self.ip or "*"
        return f"s3://{bucket}/{date}/{hour}/{ip}/*{SUFFIX}"

    def matches(self, key: str) -> bool:
        """Whether an object key lies in this scope."""
        parts = key.split("/")
        if len(parts) != 4 or not parts[3].endswith(SUFFIX):
            return False
        date, hour, ip, _name = parts
        return ((self.date is None or date == self.date)
                and (self.hour is None or hour == f"{self.hour:02d}")
                and (self.ip is None or ip == self.ip))


@dataclass(slots=True)
class Result:
    columns: list[str]
    rows: list[tuple[Any, ...]]


# --- DuckDB ----------------------------------------------------------------------------------


def connect(settings: LakeSettings, scope: Scope = Scope()):
    """A DuckDB connection with S3 set up and the view `captures` over `scope`."""
    import duckdb

    con = duckdb.connect()
    try:
        # Never reach for the network for an extension: the one we need is loaded below.
        con.execute("SET autoinstall_known_extensions = false")
        con.execute("SET TimeZone = 'UTC'")
        _load_httpfs(con)
        con.execute(_secret_sql(settings))
        source = _source(con, settings, scope)
        # One row per capture although a record may be in two objects (a crash between a
        # write and its commit, a stalled sink's late PUT: docs/lake.md, "Exactly once"):
        # the copy in the first object by name. Copies of a record always share date, hour
        # and IP (the key is made from the record), so partitioning by them as well changes
        # nothing, and lets DuckDB still apply filters on them to the file names.
        con.execute(f"""
            CREATE VIEW captures AS
            SELECT * FROM (
                SELECT id, app,
                       timezone('UTC', started_at) AS started_at,
                       timezone('UTC', ended_at) AS ended_at,
                       duration_ms, client_ip, client_port, request, response, error, v,
                       TRY_CAST(string_split(filename, '/')[-4] AS DATE) AS date,
                       TRY_CAST(string_split(filename, '/')[-3] AS INTEGER) AS hour,
                       string_split(filename, '/')[-2] AS ip,
                       filename
                FROM {source})
            QUALIFY row_number() OVER (PARTITION BY date, hour, ip, id ORDER BY filename) = 1
            """)
    except BaseException:
        con.close()
        raise
    return con


def query(settings: LakeSettings, sql: str, scope: Scope = Scope(),
          parameters: Sequence[Any] | None = None) -> Result:
    """Run one SQL statement over the view `captures`; raises LakeError subclasses."""
    import duckdb

    try:
        con = connect(settings, scope)
    except duckdb.Error as e:
        raise _known(e, settings) from None
    try:
        cursor = con.execute(sql, parameters) if parameters else con.execute(sql)
        columns = [d[0] for d in cursor.description or []]
        return Result(columns, cursor.fetchall() if columns else [])
    except (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException,
            duckdb.ConversionException, duckdb.InvalidInputException) as e:
        if "pytz" in str(e):  # DuckDB hands TIMESTAMPTZ values to Python through pytz
            raise BadQuery("the answer holds TIMESTAMP WITH TIME ZONE values: cast them to "
                           "TIMESTAMP, e.g. now()::TIMESTAMP (the view's times are UTC "
                           "TIMESTAMPs already)") from None
        raise BadQuery(_first_line(e)) from None
    except duckdb.Error as e:
        raise _known(e, settings) from None
    finally:
        con.close()


def _load_httpfs(con) -> None:
    import duckdb

    try:
        import duckdb_extension_httpfs
    except ImportError:
        packaged = None
    else:
        packaged = (Path(duckdb_extension_httpfs.__file__).parent / "extensions"
                    / f"v{duckdb.__version__}" / "httpfs.duckdb_extension")
    try:
        if packaged is not None and packaged.exists():
            con.execute(f"LOAD {_literal(str(packaged))}")
        else:
            con.execute("LOAD httpfs")  # one that `INSTALL httpfs` put in DuckDB's own folder
    except duckdb.Error as e:
        raise LakeError(
            f"DuckDB's httpfs extension cannot be loaded ({_first_line(e)}): install "
            f"duckdb-extension-httpfs=={duckdb.__version__}") from None


def _secret_sql(settings: LakeSettings) -> str:
    key, secret, token = settings.access_key_id, settings.secret_access_key, None
    if key is None:
        key, secret, token = _credential_chain()
    options = {"TYPE": "s3", "REGION": _literal(settings.region),
               "SCOPE": _literal(f"s3://{settings.bucket}")}
    if key is not None and secret is not None:
        options["KEY_ID"] = _literal(key)
        options["SECRET"] = _literal(secret)
    if token:
        options["SESSION_TOKEN"] = _literal(token)
    if settings.endpoint_url:
        parts = urlsplit(settings.endpoint_url)
        options["ENDPOINT"] = _literal(parts.netloc + parts.path)
        options["USE_SSL"] = "true" if parts.scheme == "https" else "false"
        options["URL_STYLE"] = "'path'"  # what MinIO, moto and most S3 servers but AWS want
    return ("CREATE OR REPLACE SECRET lake ("
            + ", ".join(f"{name} {value}" for name, value in options.items()) + ")")


def _credential_chain() -> tuple[str | None, str | None, str | None]:
    """Keys from the standard AWS chain (environment, profile, instance role), as boto does."""
    import botocore.session

    credentials = botocore.session.get_session().get_credentials()
    if credentials is None:
        return None, None, None
    frozen = credentials.get_frozen_credentials()
    return frozen.access_key, frozen.secret_key, frozen.token


def _source(con, settings: LakeSettings, scope: Scope) -> str:
    """read_json over the scope's objects, or an empty table of the same columns when the
    scope holds none (DuckDB's read_json fails on a glob that matches nothing)."""
    pattern = scope.glob(settings.bucket)
    (found,), = con.execute("SELECT count(*) FROM glob(?)", [pattern]).fetchall()
    columns = "{" + ", ".join(f"{_literal(n)}: {_literal(t)}" for n, t in COLUMNS.items()) + "}"
    if found:
        return (f"read_json({_literal(pattern)}, format = 'newline_delimited', "
                f"compression = 'gzip', columns = {columns}, filename = true)")
    casts = ", ".join(f"NULL::{t} AS {_ident(n)}" for n, t in COLUMNS.items())
    return f"(SELECT {casts}, NULL::VARCHAR AS filename WHERE false)"


def _known(error: Exception, settings: LakeSettings) -> LakeError:
    text = _first_line(error)
    where = f"S3 at {settings.endpoint_url or 'AWS'}"
    if "NoSuchBucket" in text or "HTTP 404" in text:
        return LakeUnreachable(f"{where}: bucket {settings.bucket!r} does not exist")
    if re.search(r"HTTP|Could not establish connection|Connection|timed out|IO Error", text):
        return LakeUnreachable(f"{where}: {text}")
    return LakeError(text)


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --- listing ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LakeEntry:
    key: str
    size: int
    modified: str


def list_objects(settings: LakeSettings, scope: Scope = Scope()) -> list[LakeEntry]:
    """The objects of a scope, by key, listed under the scope's prefix only."""
    fs = settings.filesystem(asynchronous=False)
    try:
        found = fs.find(f"{settings.bucket}/{scope.prefix()}", detail=True)
    except FileNotFoundError:
        raise LakeUnreachable(f"S3 at {settings.endpoint_url or 'AWS'}: bucket "
                              f"{settings.bucket!r} does not exist") from None
    except (OSError, ValueError) as e:
        raise LakeUnreachable(f"S3 at {settings.endpoint_url or 'AWS'}: {e}") from None
    except Exception as e:  # botocore's connection errors are not OSErrors
        if type(e).__module__.startswith(("botocore", "aiobotocore", "aiohttp")):
            raise LakeUnreachable(f"S3 at {settings.endpoint_url or 'AWS'}: {e}") from None
        raise
    entries = []
    for path, info in sorted(found.items()):
        key = path.split("/", 1)[1]
        if scope.matches(key):
            modified = info.get("LastModified")
            entries.append(LakeEntry(key, int(info.get("size", 0)),
                                     modified.isoformat() if modified else ""))
    return entries
