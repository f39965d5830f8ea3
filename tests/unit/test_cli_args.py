"""Every command line of every CLI ends in a parse or in one clear line and exit code 2, never a
traceback (issue 16). Hypothesis builds argument lists from the real parsers' options with
hostile values; only the parsing and checking runs (`parse`), which connects to nothing."""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import re
from pathlib import PurePath

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import db.__main__ as db_cli
import sinks.__main__ as sinks_cli
import stack.__main__ as stack_cli
from tapline import cli as tapline_cli

FUZZ = settings(max_examples=15, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

# What a shell can hand a process: any text but NUL, and the lone surrogates \udc80-\udcff
# that Python makes of bytes that are not UTF-8.
TEXT = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00")
               | st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF), max_size=40)
NUMBERS = st.sampled_from(["nan", "NaN", "inf", "-inf", "1e309", "-1", "0", "-0", "1e-320",
                           "99999999999", "9" * 30, "9" * 5000, "١٢", "1_000", "0x10", " 5 "])
HOSTILE = st.one_of(
    TEXT,
    NUMBERS,
    st.sampled_from(["\udcff", "caf\udce9", "/tmp/\udc80"]),  # bytes that are not UTF-8
    st.sampled_from(["", " ", "-", "--", "-1", "0", "nan", "NaN", "inf", "-inf", "1e309",
                     "99999999999w", "0m", "١٢", "1_000", "0x10", "9" * 5000, "٣h",
                     "9999-12-31", "0000-01-01", "2026-02-30", "10000-01-01", "25", "-0",
                     "fe80::1%eth0", "::ffff:10.0.0.1", "999.1.1.1", "unknown", "../..",
                     "127.0.0.1:0", "127.0.0.1:65536", "[::1]:9092", "host:", ":9092",
                     "postgresql://u:secret@h:notaport/x", "mysql://h/x", "host=x port=y",
                     "postgresql://", "http://", "http://h:99999", "ftp://h", "http://h:5000",
                     "a" * 300, "\udcff", "é\n", "7 days", "30m", "1h", "2026-11-28", "3"]),
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


# Values that are good for some option, so that one hostile value meets otherwise good ones.
GOOD = st.sampled_from(["1", "3", "23", "10", "30m", "2s", "2026-11-28", "10.0.0.1",
                        "127.0.0.1:9092", "http://127.0.0.1:5000", "captures", "reader",
                        "7 days", "postgresql://postgres@127.0.0.1:5432/tapline"])


def options(parser: argparse.ArgumentParser) -> dict[str, list[str] | None]:
    """The parser's option strings and the good values each takes (None: a flag): its
    default and choices, where it has them."""
    found: dict[str, list[str] | None] = {}
    for action in parser._actions:
        if action.option_strings and not isinstance(action, argparse._HelpAction):
            good = [str(v) for v in [action.default, *(action.choices or [])]
                    if v is not None and v is not False]
            found.update(dict.fromkeys(action.option_strings, None if action.nargs == 0
                                       else good))
    return found


def commands(parser: argparse.ArgumentParser,
             prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Each leaf command: its words and its parser."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [(prefix, parser)]
    return [leaf for name, sub in subs[0].choices.items()
            for leaf in commands(sub, (*prefix, name))]


def positionals(leaf: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in leaf._actions
            if not a.option_strings and not isinstance(a, argparse._SubParsersAction)]


def targets(parser: argparse.ArgumentParser):
    """pytest params: each command with each of its options and positionals, the one that
    gets the hostile value."""
    return [pytest.param(words, leaf, target, id=" ".join([*words, target]))
            for words, leaf in commands(parser)
            for target in [*sorted(options(leaf)), *(a.dest for a in positionals(leaf))]]


def argv_for(words: tuple[str, ...], leaf: argparse.ArgumentParser, target: str
             ) -> st.SearchStrategy[list[str]]:
    """A command's words and some of its options with good values, `target` (an option or
    a positional) with a hostile one, now and then a stray word; options in any order."""
    known = options(leaf)
    names = sorted(known)

    @st.composite
    def build(draw) -> list[str]:
        def value(option: str, hostile: bool) -> list[str]:
            good = known[option]
            if good is None:
                return [option]
            fine = st.sampled_from(good) if good else GOOD
            return [option, draw(HOSTILE if hostile else fine)]

        pieces = [value(draw(st.sampled_from(names)), False)
                  for _ in range(draw(st.integers(0, 3)))]
        if target in known:
            pieces.append(value(target, True))
        if draw(st.integers(0, 15)) == 0:
            pieces.append([draw(HOSTILE)])  # a stray word
        pieces = draw(st.permutations(pieces))
        lead = []
        for action in positionals(leaf):
            choices = sorted(map(str, action.choices or []))
            fine = st.sampled_from(choices) if choices else GOOD
            if action.dest == target:
                lead.append(draw(HOSTILE))
            elif draw(st.integers(0, 9)):
                lead.append(draw(fine))
        return [*words, *lead, *(w for piece in pieces for w in piece)]

    return build()


def outcome(parse, argv: list[str]) -> tuple[int | None, str, object]:
    """(None, "", what parse returned) when `parse` accepts argv, else (exit code, standard
    error, None)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            parsed = parse(argv)
        except SystemExit as e:
            return e.code, err.getvalue(), None
    assert err.getvalue() == "", err.getvalue()
    return None, "", parsed


def assert_ready(parsed: object) -> None:
    """What a command line that parse accepted holds can go to the services as it is: text
    that encodes, ports that are ports, finite numbers."""
    for name, value in (vars(parsed) if isinstance(parsed, argparse.Namespace) else {}).items():
        if isinstance(value, str | PurePath):
            str(value).encode("utf-8")
        elif isinstance(value, float):
            assert math.isfinite(value), (name, value)
        elif isinstance(value, int) and name.endswith("port"):
            assert 0 < value < 65536, (name, value)


def assert_clean(parse, argv: list[str], prefix: str) -> None:
    code, err, parsed = outcome(parse, argv)
    if code is None:
        assert_ready(parsed)
        return
    if code == 0:  # -h/--help, or an abbreviation of it
        assert any(w.startswith("-h") or ("--help".startswith(w) and len(w) > 2) for w in argv)
        return
    assert code == 2, (argv, code, err)
    assert err.endswith("\n") and err.count("\n") == 1, (argv, err)
    assert re.match(prefix, err), (argv, err)
    assert "secret" not in err, (argv, err)  # a URL's password is never echoed


@pytest.mark.parametrize(("words", "leaf", "target"), targets(tapline_cli._parser()))
@FUZZ
@given(data=st.data())
def test_tapline_command_lines(words, leaf, target, data):
    argv = data.draw(argv_for(words, leaf, target))
    assert_clean(tapline_cli.parse, argv, r"tapline( \w+)*: \S")


@pytest.mark.parametrize("argv", [
    ["report", "--since", "99999999999w"], ["load", "--rate", "nan"],
    ["load", "--rate", "inf", "--duration", "1s"], ["tail", "--bootstrap", "127.0.0.1:99999"],
    ["report", "--database", "postgresql://u:secret@h:notaport/x"],
    ["lake", "query", "SELECT 1", "--date", "10000-01-01"], ["lake", "query", "\udcff"]])
def test_tapline_known_command_lines(argv):
    assert_clean(tapline_cli.parse, argv, r"tapline( \w+)*: \S")


@pytest.mark.parametrize(("words", "leaf", "target"), targets(db_cli._parser()))
@FUZZ
@given(data=st.data())
def test_db_command_lines(words, leaf, target, data):
    assert_clean(db_cli.parse, data.draw(argv_for(words, leaf, target)), r"db: error: \S")


@pytest.mark.parametrize("argv", [
    ["upgrade", "--url", "postgresql://u:secret@h:notaport/x"],
    ["login", "Robert'); DROP", "--group", "reader"], ["policies", "--retention", "é\n"]])
def test_db_known_command_lines(argv):
    assert_clean(db_cli.parse, argv, r"db: error: \S")


@pytest.mark.parametrize(("words", "leaf", "target"), targets(stack_cli._parser()))
@FUZZ
@given(data=st.data())
def test_stack_command_lines(words, leaf, target, data):
    assert_clean(stack_cli.parse, data.draw(argv_for(words, leaf, target)), r"stack: error: \S")


@FUZZ
@given(st.lists(HOSTILE, max_size=3).map(lambda rest: ["run", *rest]))
@example(["kafka", "--kafka-port", "99999999999999999999"])
@example(["s3", "--bucket", "No_Such"])
def test_stack_run_command_lines(argv):
    assert_clean(stack_cli.parse, argv, r"stack: error: \S")


@FUZZ
@given(st.lists(st.one_of(HOSTILE, st.sampled_from(["timescale", "lake"])), max_size=3))
def test_sink_command_lines(argv):
    assert_clean(sinks_cli.parse, argv, r"usage: python -m sinks \{")


@pytest.mark.parametrize(("argv", "says"), [
    (["report", "--since", "99999999999w"],
     "tapline: --since: bad duration '99999999999w': at most 36500d (100 years)\n"),
    (["load", "--rate", "nan"],
     "tapline: --rate nan: use a number of requests per second above 0 and at most 100,000\n"),
    (["report", "--database", "postgresql://u:secret@h:notaport/x"],
     "tapline: --database is not a PostgreSQL URL or connection string "
     "(postgresql://user@host:port/dbname)\n"),
    (["tail", "-n", "0"], "tapline: --limit 0: use a whole number of 1 or more\n"),
])
def test_known_mistakes_say_what_is_wrong(argv, says):
    # `tapline report --since 99999999999w` ended in an OverflowError traceback.
    with pytest.raises(SystemExit, match="2"), contextlib.redirect_stderr(err := io.StringIO()):
        tapline_cli.main(argv)
    assert err.getvalue() == says


def test_a_valid_command_line_is_checked_and_ready():
    args = tapline_cli.parse(["load", "--rate", "10", "--duration", "2m", "--clients", "3"])
    assert (args.duration_s, args.rate, args.clients) == (120.0, 10.0, 3)


def test_a_blank_policy_interval_means_no_such_policy():
    """compose passes an unset TIMESCALE_COMPRESS_AFTER as an empty argument."""
    args = db_cli.parse(["policies", "--compress-after", "", "--retention", " "])
    assert args.compress_after is None and args.retention is None
    args = db_cli.parse(["policies", "--compress-after", "7 days"])
    assert args.compress_after == "7 days" and args.retention is None
