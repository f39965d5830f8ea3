"""Bodies as the scanners need them: content-encoding undone, bytes made text: pure.

Decompression is bounded: output stops at the cap, whatever the input claims (a decompression
bomb yields its first `limit` bytes and is marked cut). gzip and deflate use zlib's
`max_length`, zstd a stream reader read to the limit with a bounded window, and brotli
brotlicffi's `output_buffer_limit` (Brotli 1.1, which mitmproxy pins, cannot bound its output).
"""

from __future__ import annotations

import codecs
import functools
import io
import zlib
from collections.abc import Callable

import brotlicffi
import zstandard


class Undecodable(Exception):
    """A body the proxy cannot turn into what was meant; `reason` names why, for the record."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# RFC 8878 asks HTTP decoders to take windows up to 8 MB; a frame asking for more is refused.
ZSTD_MAX_WINDOW = 8 << 20
# Bounds on work that does not grow with the output: codings stacked on one body, and gzip
# members one after another (each member costs a copy of what follows it).
MAX_CODINGS = 4
MAX_MEMBERS = 64
_ASCII_PROBE = "".join(map(chr, range(9, 127)))


@functools.lru_cache(maxsize=256)
def ascii_compatible(codec: str) -> bool:
    """Whether a codec writes ASCII text as its ASCII bytes (UTF-8, ISO-8859-*, cp125x,
    Shift_JIS; not UTF-16, UTF-32, EBCDIC), told by trying it."""
    try:
        return _ASCII_PROBE.encode(codec) == _ASCII_PROBE.encode("ascii")
    except (UnicodeError, LookupError):
        return False


def codings(header_values: list[str]) -> list[str]:
    """The content codings of a message, in the order they were applied (identity left out)."""
    out = []
    for value in header_values:
        for part in value.split(","):
            coding = part.strip().lower()
            if coding and coding != "identity":
                out.append(coding)
    return out


def undo(data: bytes, applied: list[str], limit: int,
         deadline: Callable[[], None] | None = None) -> tuple[bytes, bool]:
    """`data` with the codings in `applied` undone, last first: at most `limit` bytes, and
    whether there was more. Raises Undecodable."""
    if len(applied) > MAX_CODINGS:
        raise Undecodable(f"{len(applied)} content codings, more than {MAX_CODINGS}")
    cut = False
    for coding in reversed(applied):
        data, more = _undo_one(data, coding, limit)
        cut = cut or more
        if deadline:
            deadline()
    return data, cut


def _undo_one(data: bytes, coding: str, limit: int) -> tuple[bytes, bool]:
    try:
        if coding in ("gzip", "x-gzip"):
            return _zlib(data, 16 + zlib.MAX_WBITS, limit, members=True)
        if coding == "deflate":
            # RFC 9110's deflate is zlib-wrapped; some servers send raw deflate.
            try:
                return _zlib(data, zlib.MAX_WBITS, limit)
            except zlib.error:
                return _zlib(data, -zlib.MAX_WBITS, limit)
        if coding == "br":
            return _brotli(data, limit)
        if coding == "zstd":
            return _zstd(data, limit)
    except (zlib.error, brotlicffi.error, zstandard.ZstdError) as e:
        raise Undecodable(f"{coding} stream is corrupt") from e
    raise Undecodable(f"content-encoding {coding!r} is unknown")


def _zlib(data: bytes, wbits: int, limit: int, *, members: bool = False) -> tuple[bytes, bool]:
    out = bytearray()
    for _ in range(MAX_MEMBERS):
        d = zlib.decompressobj(wbits)
        out += d.decompress(data, limit + 1 - len(out))
        if len(out) > limit or d.unconsumed_tail:
            return bytes(out[:limit]), True
        # A gzip stream may hold several members one after another (RFC 1952).
        data = d.unused_data if members and d.eof else b""
        if not data:
            return bytes(out), False
    raise Undecodable(f"gzip stream of more than {MAX_MEMBERS} members")


def _brotli(data: bytes, limit: int) -> tuple[bytes, bool]:
    d = brotlicffi.Decompressor()
    out = d.process(data, output_buffer_limit=limit + 1)
    if len(out) > limit or not d.can_accept_more_data():
        return out[:limit], True
    return out, False


def _zstd(data: bytes, limit: int) -> tuple[bytes, bool]:
    reader = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).stream_reader(
        io.BytesIO(data), read_across_frames=True)
    out = bytearray()
    try:
        while len(out) <= limit:
            chunk = reader.read(limit + 1 - len(out))
            if not chunk:
                break
            out += chunk
    except zstandard.ZstdError:
        if not out:  # a stream cut at the cap ends in a partial frame: keep what came out
            raise
    return bytes(out[:limit]), len(out) > limit


# Text codecs a declared charset may name. Others (idna, punycode, the *_escape codecs, and
# anything not a text encoding) are refused: a body that names them is undecodable.
_REFUSED_CODECS = frozenset(("idna", "punycode", "unicode-escape", "raw-unicode-escape",
                             "unicode_escape", "raw_unicode_escape"))


def text_codec(charset: str) -> str | None:
    """The Python codec of a declared charset, or None when it is unknown or refused."""
    try:
        info = codecs.lookup(charset.strip().strip("\"'"))
    except (LookupError, ValueError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _REFUSED_CODECS:
        return None
    return info.name


def to_text(data: bytes, codec: str, cut: bool) -> str | None:
    """`data` decoded, or None when it does not decode. A body cut at the cap may end in the
    middle of a character: that partial character is dropped."""
    try:
        return data.decode(codec)
    except UnicodeDecodeError as e:
        if cut and e.start >= len(data) - 4:
            try:
                return data[:e.start].decode(codec)
            except UnicodeDecodeError:
                return None
        return None


# C0 controls that no text carries (tab, line feed, form feed, carriage return and escape
# are left out: text has them).
_CONTROLS = bytes(b for b in range(32) if b not in (9, 10, 12, 13, 27)) + b"\x7f"


def looks_textual(utf8: bytes) -> bool:
    """Whether UTF-8 bytes read as text: no NUL, and at most 1% other control characters."""
    if b"\x00" in utf8:
        return False
    controls = len(utf8) - len(utf8.translate(None, _CONTROLS))
    return controls * 100 <= len(utf8)


# Media that hold no text to scan, told by their first bytes, not by what the sender says.
_MAGIC = (
    b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"\x00\x00\x01\x00",
    b"II*\x00", b"MM\x00*", b"\x1a\x45\xdf\xa3", b"ID3", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2",
    b"OggS", b"fLaC", b"wOFF", b"wOF2", b"\x00\x01\x00\x00", b"OTTO",
)


def inert_media(media_type: str, data: bytes) -> bool:
    """An image, audio, video or font body whose bytes are what its type says."""
    major = media_type.partition("/")[0]
    if major not in ("image", "audio", "video", "font") and media_type not in (
            "application/font-woff", "application/vnd.ms-fontobject"):
        return False
    if media_type == "image/svg+xml":
        return False  # XML: text, scanned like any other
    if looks_textual(data[:4096]):
        return False  # text after an image's first bytes (a polyglot): scanned as text
    if data.startswith(_MAGIC):
        return True
    # RIFF (WebP, WAV, AVI) and ISO base media (MP4, MOV, HEIC, AVIF) name their kind later.
    if data[:4] == b"RIFF" and data[8:12] in (b"WEBP", b"WAVE", b"AVI "):
        return True
    return data[4:8] == b"ftyp"
