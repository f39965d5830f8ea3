"""The pure parts of asking the lake: scopes and the globs they narrow to, the S3 secret DuckDB
gets, and the CLI's table. No service is needed."""

from __future__ import annotations

import re

import pytest

from sinks.lake import LakeSettings
from tapline.cli import text_table
from tapline.lake import BadScope, Scope, _secret_sql


@pytest.mark.parametrize(("scope", "glob", "prefix"), [
    (Scope(), "s3://b/*/*/*/*.jsonl.gz", ""),
    (Scope.of("2026-11-28"), "s3://b/2026-11-28/*/*/*.jsonl.gz", "2026-11-28/"),
    (Scope.of("2026-11-28", 7), "s3://b/2026-11-28/07/*/*.jsonl.gz", "2026-11-28/07/"),
    (Scope.of("2026-11-28", "10", "127.0.0.1"), "s3://b/2026-11-28/10/127.0.0.1/*.jsonl.gz",
     "2026-11-28/10/127.0.0.1/"),
    (Scope.of("2026-11-28", None, "::FFFF:10.0.0.1"), "s3://b/2026-11-28/*/10.0.0.1/*.jsonl.gz",
     "2026-11-28/"),
    (Scope.of(None, None, "2001:DB8::1"), "s3://b/*/*/2001:db8::1/*.jsonl.gz", ""),
    (Scope.of(ip="unknown"), "s3://b/*/*/unknown/*.jsonl.gz", ""),
])
def test_a_scope_narrows_the_glob_and_the_listing(scope, glob, prefix):
    assert scope.glob("b") == glob
    assert scope.prefix() == prefix


def test_a_scope_matches_the_keys_it_covers():
    scope = Scope.of("2026-11-28", None, "127.0.0.1")
    assert scope.matches("2026-11-28/10/127.0.0.1/t-0-5.jsonl.gz")
    assert not scope.matches("2026-11-28/10/127.0.0.2/t-0-5.jsonl.gz")
    assert not scope.matches("2026-11-29/10/127.0.0.1/t-0-5.jsonl.gz")
    assert not scope.matches("2026-11-28/10/127.0.0.1/notes.txt")
    assert not scope.matches("x/2026-11-28/10/127.0.0.1/t-0-5.jsonl.gz")


@pytest.mark.parametrize(("args", "says"), [
    ({"date": "28/11/2026"}, "--date '28/11/2026': use YYYY-MM-DD"),
    ({"date": "2026-02-30"}, "--date '2026-02-30'"),
    ({"date": "*"}, "--date '*'"),
    ({"hour": "24"}, "--hour 24"),
    ({"hour": "-1"}, "--hour -1"),
    ({"hour": "*"}, "--hour '*'"),
    ({"ip": "../../x"}, "not an IP address"),
    ({"ip": "*"}, "not an IP address"),
    ({"ip": "10.0.0.0/8"}, "not an IP address"),
])
def test_a_scope_refuses_what_names_no_part_of_the_lake(args, says):
    with pytest.raises(BadScope, match=re.escape(says)):
        Scope.of(**args)


def test_duckdb_gets_a_path_style_secret_for_a_local_server():
    sql = _secret_sql(LakeSettings.from_env({"S3_ENDPOINT_URL": "http://127.0.0.1:9000",
                                             "S3_SECRET_ACCESS_KEY": "it's"}))
    assert sql.startswith("CREATE OR REPLACE SECRET lake (TYPE s3, ")
    for part in ("KEY_ID 'tapline'", "SECRET 'it''s'", "ENDPOINT '127.0.0.1:9000'",
                 "USE_SSL false", "URL_STYLE 'path'", "SCOPE 's3://captures'",
                 "REGION 'us-east-1'"):
        assert part in sql


def test_duckdb_gets_the_credential_chain_for_aws(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDCHAIN")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "chain-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "tok")
    sql = _secret_sql(LakeSettings.from_env({"S3_ENDPOINT_URL": "", "S3_REGION": "eu-west-3"}))
    assert "KEY_ID 'AKIDCHAIN'" in sql and "SESSION_TOKEN 'tok'" in sql
    assert "ENDPOINT" not in sql and "URL_STYLE" not in sql and "REGION 'eu-west-3'" in sql


def test_the_table_aligns_cuts_and_counts():
    table = text_table(["path", "n", "note"],
                       [("/hello", 3, None), ("/jobs", 12, "a\nb"), ("/x" * 50, 1, "y")],
                       max_width=20)
    lines = table.splitlines()
    assert lines[0] == "path                   n  note"
    assert lines[1] == "--------------------  --  ----"
    assert lines[2] == "/hello                 3  NULL"
    assert lines[3] == "/jobs                 12  a\\nb"
    assert lines[4] == "/x/x/x/x/x/x/x/x/x/…   1  y"
    assert lines[5] == "(3 rows)"
    assert text_table(["a"], []).splitlines()[-1] == "(0 rows)"
