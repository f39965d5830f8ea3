"""compose_binary.py finds the system's Debian mirror in its apt sources, whatever their form."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.compose.compose_binary import DEFAULT_KEYRING, ComposeUnavailable, system_mirror

DEB822 = """\
Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: {keyring}

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


def apt_etc(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_deb822_sources(tmp_path):
    keyring = tmp_path / "keyring.gpg"
    keyring.write_bytes(b"")
    etc = apt_etc(tmp_path, {
        "sources.list.d/nodesource.sources":
            "Types: deb\nURIs: https://third.example/node\nSuites: nodistro\n",
        "sources.list.d/debian.sources": DEB822.format(keyring=keyring),
    })
    mirror = system_mirror(etc, codename="bookworm")
    assert (mirror.uri, mirror.keyring) == ("http://mirror.example/debian", str(keyring))


def test_one_line_sources_and_disabled_entries(tmp_path):
    etc = apt_etc(tmp_path, {
        "sources.list.d/off.sources":
            "Enabled: no\nTypes: deb\nURIs: http://off.example/debian\nSuites: trixie\n",
        "sources.list": "# deb http://old.example/debian trixie main\n"
                        "deb-src http://src.example/debian trixie main\n"
                        "deb [arch=amd64 signed-by=/nowhere.gpg] http://one.example/debian/ "
                        "trixie main contrib\n",
    })
    mirror = system_mirror(etc, codename="trixie")
    # A keyring that is not there is not passed on: Debian's own keyring serves instead.
    assert (mirror.uri, mirror.keyring) == ("http://one.example/debian", DEFAULT_KEYRING)


def test_no_source_of_the_release_is_an_error(tmp_path):
    etc = apt_etc(tmp_path, {"sources.list": "deb http://third.example/x nodistro main\n"})
    with pytest.raises(ComposeUnavailable, match="bookworm"):
        system_mirror(etc, codename="bookworm")
