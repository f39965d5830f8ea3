"""A body through the redactor: decoded, read by its structure, redacted, or withheld: pure.

The order matters (docs/security.md):
1. undo Content-Encoding, bounded by the cap (a bomb stops there and the body is cut);
2. multipart bodies are split into parts, each read like a body of its own;
3. the bytes become text by the declared charset (else UTF-8, else ISO-8859-1 for a text
   type); what is not text (or is undecodable) is withheld, unless it is known-inert media;
4. text that holds nothing any rule looks at (one RE2 scan) is kept as it is;
5. otherwise it is read by what it is, or looks like when the content type is wrong: JSON
   (walked whole), urlencoded forms, anything else as text (pairs, shapes, markup);
6. a body cut at the cap loses its last token, which may be a secret's first characters.

Anything over the time budget, nested past the JSON parser's depth, or in an encoding or
charset the proxy cannot undo is withheld: the record keeps the size, the content type (in the
headers) and a keyed digest of the bytes, and says why.
"""

from __future__ import annotations

import base64
import re
from typing import Any
from urllib.parse import unquote

import orjson

from capture.redact import decode
from capture.redact.names import MARK
from capture.redact.redactor import (
    MARKER,
    Body,
    BudgetExceeded,
    Redactor,
    deadline_after,
)
from capture.redact.text import Deadline, TextScanner, cut_tail, field_class, is_card

_JSON_TYPES = ("application/json", "text/json", "application/graphql-response+json")
_NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl",
                 "application/x-jsonlines", "application/json-seq")
_FORM = "application/x-www-form-urlencoded"
# Types whose bytes are text even without a charset (ISO-8859-1 when not UTF-8).
_TEXT_TYPES = ("application/xml", "application/javascript", "application/ecmascript",
               "application/graphql", "application/yaml", "application/x-yaml", "application/sql",
               "application/x-sh", "application/toml", _FORM, *_JSON_TYPES, *_NDJSON_TYPES)
_FORM_SHAPE = re.compile(r"[^=&\s]++=[^&\s]*+(?:&[^=&\s]*+(?:=[^&\s]*+)?+)*+")
_MULTIPART_DEPTH = 2
WITHHELD_PART = "[withheld: %d bytes]"


def media_type(content_type: str) -> tuple[str, dict[str, str]]:
    """`text/html; charset=UTF-8` -> ("text/html", {"charset": "UTF-8"})."""
    media, *rest = content_type.split(";")
    params = {}
    for part in rest:
        name, eq, value = part.partition("=")
        if eq:
            params[name.strip().lower()] = value.strip().strip('"')
    return media.strip().lower(), params


def textual_type(media: str) -> bool:
    return media.startswith("text/") or media.endswith(("+json", "+xml")) \
        or media in _TEXT_TYPES


def redact_body(r: Redactor, data: bytes, *, cut: bool, content_type: str,
                content_encoding: list[str], params: bool = False,
                deadline: Deadline | None = None) -> Body:
    """The body of one message as the record keeps it. `cut`: the bytes are the first part
    of a longer body. `params`: also read its form or JSON parameters (small request bodies).
    `deadline`: the record's (else the policy's budget from now)."""
    if not data:
        return Body(truncated=cut, content_encoding=", ".join(decode.codings(content_encoding)))
    if len(data) <= QUICK_BYTES and not content_encoding and not cut and not params:
        quick = quick_text(r, data, content_type)
        if quick is not None:
            return Body(text=quick)
    policy = r.policy
    applied = decode.codings(content_encoding)
    body = Body(truncated=cut, content_encoding=", ".join(applied))
    wire = data
    if deadline is None:
        deadline = deadline_after(policy.budget_ms / 1000)
    try:
        if applied:
            data, more = decode.undo(data, applied, policy.body_max_bytes, deadline)
            body.truncated = cut = cut or more
        media, options = media_type(content_type)
        if media.startswith("multipart/") or _MULTIPART_START.match(data):
            if _read_multipart(r, body, data, media, options, cut, deadline, params):
                return body
            if media.startswith("multipart/"):
                raise decode.Undecodable("multipart body without its boundary")
        if decode.inert_media(media, data):
            body.text, body.encoding = _as_record_text(data)
            return body
        text = _text_of(data, media, options.get("charset"), cut, r.scanner)
        if text is None:
            return _unscanned(r, body, wire, data, "binary")
        _redact_text(r, body, text, media, cut, deadline, params)
        return body
    except decode.Undecodable as e:
        return _unscanned(r, body, wire, data, e.reason)
    except BudgetExceeded:
        return _unscanned(r, body, wire, data, "over the redaction budget")
    except RecursionError:
        return _unscanned(r, body, wire, data, "nested too deep")


QUICK_BYTES = 4096  # bodies up to this size are first tried the quick way
# Characters no text carries (as in decode.looks_textual, where a few are let through).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")


def quick_text(r: Redactor, data: bytes, content_type: str) -> str | None:
    """A small, whole, uncoded body that is UTF-8 text with nothing any rule could find in it
    (most small answers): the text as it is. None when the long way must decide."""
    lowered = content_type.lower()
    if ("charset" in lowered and "utf-8" not in lowered) or "multipart/" in lowered:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if _CONTROL.search(text) or r.scanner.may_hold(text, data) \
            or (data[:2] == b"--" and _MULTIPART_START.match(data)):
        return None
    return text


def _text_of(data: bytes, media: str, charset: str | None, cut: bool,
             scanner: TextScanner | None = None) -> str | None:
    """The body as text, or None when it is not text. Raises Undecodable for a charset the
    proxy does not know or that the bytes do not follow."""
    if charset:
        codec = decode.text_codec(charset)
        if codec is None:
            raise decode.Undecodable(f"charset {charset!r} is unknown")
        text = decode.to_text(data, codec, cut)
        if text is None:
            raise decode.Undecodable(f"body is not valid {codec}")
        if scanner is not None and codec not in decode.ASCII_COMPATIBLE and \
                scanner.may_hold(latin := data.decode("latin-1"), latin.encode()):
            # ASCII bytes sent as UTF-16 read as other characters, and give the ASCII back
            # to whoever encodes them again: what the bytes say must be scanned too.
            raise decode.Undecodable(f"body does not read as {codec}")
        utf8 = data if codec == "utf-8" else text.encode("utf-8", "surrogatepass")
        return text if decode.looks_textual(utf8) else None
    text = decode.to_text(data, "utf-8", cut)
    if text is not None:
        return text if decode.looks_textual(data) else None
    if textual_type(media) and decode.looks_textual(data):
        return data.decode("latin-1")  # text without a charset: every byte maps to one
    return None


def _unscanned(r: Redactor, body: Body, wire: bytes, data: bytes, reason: str) -> Body:
    """A body that could not be scanned: withheld, or kept as it came when the policy says."""
    if r.policy.unscanned == "keep":
        body.text, body.encoding = _as_record_text(data)
        return body
    body.text, body.encoding = "", "utf-8"
    body.withheld = reason
    body.digest = r.fingerprint(wire, "body")
    body.form, body.json = [], []
    return body


def _as_record_text(data: bytes) -> tuple[str, str]:
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


# --- text ----------------------------------------------------------------------------------


def _redact_text(r: Redactor, body: Body, text: str, media: str, cut: bool,
                 deadline: Deadline, params: bool) -> None:
    scanner = r.scanner
    structured = media in _JSON_TYPES or media.endswith("+json") or media == _FORM
    quiet = not scanner.may_hold(text)
    if quiet and not cut:
        body.text = text
        if params and structured:
            body.form, body.json = _params_as_is(text, media, r.policy.params_body_max_bytes)
        return
    small = params and len(text.encode("utf-8", "surrogatepass")) <= \
        r.policy.params_body_max_bytes
    redacted = None
    if media in _NDJSON_TYPES:
        redacted = _ndjson(r, text, deadline)
    elif not media.endswith("+xml") and media not in ("text/html", "application/xml",
                                                       "text/xml"):
        if text.startswith("\ufeff"):  # a byte order mark: JSON parsers refuse it
            text = text[1:]
        stripped = text.lstrip()
        if stripped[:1] in ("{", "[", '"') or media in _JSON_TYPES or media.endswith("+json"):
            value = _json(text)
            if value is not _NOT_JSON:
                value = redact_json(r, value, deadline)
                redacted = orjson.dumps(value).decode()
                if small and media != _FORM and isinstance(value, dict):
                    body.json = [[k, v] for k, v in value.items()]
        if redacted is None and (media == _FORM or _FORM_SHAPE.fullmatch(text)):
            redacted, pairs = r.pairs(text, deadline)
            if small and media == _FORM:
                body.form = pairs
    if redacted is None:
        redacted = r.scrub(text, deadline)
    body.text = cut_tail(redacted) if cut else redacted


_NOT_JSON = object()


def _json(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as e:
        if "depth" in str(e):
            raise decode.Undecodable("JSON nested past the parser's depth (1024)") from None
        return _NOT_JSON


def _params_as_is(text: str, media: str, limit: int) -> tuple[list, list]:
    """Parameters of a body with nothing to redact (small bodies only, as before)."""
    if len(text) > limit:
        return [], []
    if media == _FORM:
        from capture.redact.redactor import plain_pairs
        return plain_pairs(text), []
    value = _json(text)
    if isinstance(value, dict):
        return [], [[k, v] for k, v in value.items()]
    return [], []


def _ndjson(r: Redactor, text: str, deadline: Deadline) -> str:
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if not i % 64:
            deadline()
        if not line.strip():
            continue
        value = _json(line)
        lines[i] = r.scrub(line, deadline) if value is _NOT_JSON else orjson.dumps(
            redact_json(r, value, deadline)).decode()
    return "\n".join(lines)


def redact_json(r: Redactor, value: Any, deadline: Deadline) -> Any:
    """A parsed JSON value with every secret replaced: members by their names (any value
    type: a secret's object or array goes whole), strings and keys by what the text scanner
    finds in them, big integers that are card numbers, a value named by its neighbour
    (`{"name": "DB_PASSWORD", "value": ...}`, `["pin", 1234]`). Walks without recursion."""
    if isinstance(value, str):
        scrubbed = r.scrub_many([value], deadline)
        return value if scrubbed is None else scrubbed[0]
    if not isinstance(value, dict | list):
        return MARKER if _card_number(value) else value
    judged: dict[str, str | None] = {}  # keys repeat in every item of a list
    classify_name = r.rules.classify

    def classify(name: str) -> str | None:
        action = judged.get(name, _UNJUDGED)
        if action is _UNJUDGED:
            action = judged[name] = classify_name(name)
        return action

    strings: list[str] = []
    where: list[tuple[Any, Any]] = []  # (container, key or index) of each string
    names: set[str] = set()  # every key, once: a key may itself be a secret (an e-mail)
    stack = [value]
    seen = next_check = 0
    while stack:
        node = stack.pop()
        seen += len(node)
        if seen >= next_check:
            deadline()
            next_check = seen + 4096
        if type(node) is dict:
            if len(node) <= 8 and not _NAME_MEMBERS.isdisjoint(node):
                _named_value(r, node)
            names.update(node)
            for key, item in node.items():
                action = judged.get(key, _UNJUDGED)
                if action is _UNJUDGED:
                    action = judged[key] = classify_name(key)
                if action is not None:
                    if item is not None and type(item) is not bool:
                        node[key] = MARKER if action == MARK else r.replacement(
                            _canonical(item), action, field_class(key))
                    continue
                kind = type(item)
                if kind is str:
                    strings.append(item)
                    where.append((node, key))
                elif kind is dict or kind is list:
                    stack.append(item)
                elif kind is int and item >= 10**12 and _card_number(item):
                    node[key] = MARKER
            continue
        if len(node) == 2 and type(node[0]) is str and node[1] is not None \
                and type(node[1]) is not bool and (pair := classify(node[0])) is not None:
            # ["password", "..."]: a pair in a list (form fields, header lists)
            node[1] = MARKER if pair == MARK else r.replacement(
                _canonical(node[1]), pair, field_class(node[0]))
            continue
        for i, item in enumerate(node):
            kind = type(item)
            if kind is str:
                strings.append(item)
                where.append((node, i))
            elif kind is dict or kind is list:
                stack.append(item)
            elif kind is int and item >= 10**12 and _card_number(item):
                node[i] = MARKER
    scrubbed = r.scrub_many(strings, deadline)
    if scrubbed is not None:
        for (node, key), new in zip(where, scrubbed, strict=True):
            node[key] = new
    renamed = r.scrub_many(sorted(names), deadline) if names else None
    if renamed is not None:
        _rename_keys(value, dict(zip(sorted(names), renamed, strict=True)))
    return value


_UNJUDGED = object()


def _rename_keys(value: Any, renamed: dict[str, str]) -> None:
    """Replace the keys that held a secret, wherever they are (a second walk, rarely run)."""
    renamed = {old: new for old, new in renamed.items() if old != new}
    stack = [value]
    while stack:
        node = stack.pop()
        if type(node) is dict:
            for old in [k for k in node if k in renamed]:
                node[renamed[old]] = node.pop(old)
            stack.extend(v for v in node.values() if type(v) in (dict, list))
        elif type(node) is list:
            stack.extend(v for v in node if type(v) in (dict, list))


# An object that is one setting by name: {"name": "DB_PASSWORD", "value": "..."} (Kubernetes
# env, AWS SSM parameters, key/value lists). Its value goes when its name is a secret's.
_NAME_WORDS = ("name", "key", "field", "param", "parameter", "variable", "var", "label",
               "setting", "option")
_NAME_MEMBERS = frozenset(w for n in _NAME_WORDS for w in (n, n.title(), n.upper()))
_VALUE_MEMBERS = frozenset(("value", "val", "data", "content", "default", "values"))


def _named_value(r: Redactor, node: dict) -> None:
    names = [v for k, v in node.items() if k in _NAME_MEMBERS and type(v) is str]
    for name in names:
        action = r.rules.classify(name)
        if action is not None:
            break
    else:
        return
    for key in list(node):
        if key.lower() in _VALUE_MEMBERS and node[key] is not None \
                and type(node[key]) is not bool:
            node[key] = MARKER if action == MARK else r.replacement(
                _canonical(node[key]), action, field_class(name))


def _canonical(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _card_number(value: Any) -> bool:
    """An integer that is a card number (timestamps in milliseconds start with 1: no card
    does)."""
    if type(value) is not int or not 10**12 <= value < 10**19:
        return False
    digits = str(value)
    return digits[0] in "23456" and is_card(digits)


# --- multipart -------------------------------------------------------------------------------


# A body that starts like a multipart one (a boundary line, then part headers), whatever its
# content type says.
_MULTIPART_START = re.compile(rb"--([^\s]{1,200})\r?\n(?i:content-(?:disposition|type)):")


def _read_multipart(r: Redactor, body: Body, data: bytes, media: str, options: dict[str, str],
                    cut: bool, deadline: Deadline, params: bool) -> bool:
    """Redact a multipart body part by part; False when no boundary splits it: the one its
    content type names, or the one on its first line."""
    boundary = options.get("boundary", "").strip('"').encode("latin-1", "replace")
    if not boundary or b"--" + boundary not in data:
        first = _MULTIPART_START.match(data)
        if first is None:
            return False
        boundary = first.group(1)
    fields: list[list[Any]] = []
    out = _multipart(r, data, boundary, cut, deadline, fields, 1)
    body.text, body.encoding = _as_record_text(out)
    if params and len(data) <= r.policy.params_body_max_bytes and media == "multipart/form-data":
        body.form = fields
    return True


_PART_HEADER = re.compile(rb"(?im)^content-disposition:[^\r\n]*")
_PART_TYPE = re.compile(rb"(?im)^content-type:[ \t]*([^\r\n]*)")
_PART_ENCODING = re.compile(rb"(?im)^content-transfer-encoding:[ \t]*([^\r\n]*)")
_DISPOSITION_PARAM = re.compile(
    r"""(?i);\s*(name\*?|filename\*?)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))""")


def _multipart(r: Redactor, data: bytes, boundary: bytes, cut: bool, deadline: Deadline,
               fields: list[list[Any]], depth: int) -> bytes:
    delimiter = b"--" + boundary
    pieces = data.split(delimiter)
    # Before the first boundary and after the last, nothing is meant to be read; it is text
    # a client could fill, so it is scrubbed like text.
    out = [_scrub_bytes(r, pieces[0], deadline)]
    last = len(pieces) - 1
    for i, piece in enumerate(pieces[1:], 1):
        deadline()
        if piece.startswith(b"--"):
            out.append(b"--" + _scrub_bytes(r, piece[2:], deadline))
            continue
        head, sep, content = piece.partition(b"\r\n\r\n")
        if not sep:
            head, sep, content = piece.partition(b"\n\n")
        if not sep:  # a part cut inside its headers: nothing of it can be read safely
            out.append(_scrub_bytes(r, cut_tail(head.decode("latin-1")).encode("latin-1"),
                                    deadline) if cut and i == last else b"")
            continue
        trail = b""
        if i < last:
            for ending in (b"\r\n", b"\n"):
                if content.endswith(ending):
                    content, trail = content[:-len(ending)], ending
                    break
        part_cut = cut and i == last
        new = _part(r, head, content, part_cut, deadline, fields, depth)
        out.append(_scrub_bytes(r, head, deadline) + sep + new + trail)
    return delimiter.join(out)


def _part(r: Redactor, head: bytes, content: bytes, cut: bool, deadline: Deadline,
          fields: list[list[Any]], depth: int) -> bytes:
    disposition = _PART_HEADER.search(head)
    name = filename = None
    if disposition:
        for m in _DISPOSITION_PARAM.finditer(disposition.group().decode("latin-1")):
            value = m.group(2) if m.group(2) is not None else m.group(3)
            which = m.group(1).lower()
            if which.endswith("*"):  # RFC 5987: charset'language'percent-encoded
                value = unquote(value.split("'", 2)[-1])
            if which.startswith("name"):
                name = value
            else:
                filename = value
    typed = _PART_TYPE.search(head)
    content_type = typed.group(1).decode("latin-1").strip() if typed else ""
    media, options = media_type(content_type)
    transfer = _PART_ENCODING.search(head)
    if transfer and transfer.group(1).strip().lower() not in (b"7bit", b"8bit", b"binary"):
        return (WITHHELD_PART % len(content)).encode()  # base64 or quoted-printable parts
    action = r.rules.classify(name) if name else None
    if action is not None:
        text = content.decode("utf-8", "replace")
        value = r.replacement(text, action, field_class(name)) if action != MARK else MARKER
        if filename is None:
            fields.append([name, value])
        return value.encode()
    if media.startswith("multipart/"):
        inner = options.get("boundary", "").strip('"').encode("latin-1", "replace")
        if depth < _MULTIPART_DEPTH and inner and b"--" + inner in content:
            return _multipart(r, content, inner, cut, deadline, [], depth + 1)
        return (WITHHELD_PART % len(content)).encode()  # too deep, or no boundary in it
    if filename is not None and r.policy.form_files != "keep":
        return (WITHHELD_PART % len(content)).encode()
    if decode.inert_media(media, content):
        return content
    try:
        text = _text_of(content, media, options.get("charset"), cut, r.scanner)
    except decode.Undecodable:
        text = None
    if text is None:
        if r.policy.unscanned == "keep":
            return content
        return (WITHHELD_PART % len(content)).encode()
    part = Body()
    _redact_text(r, part, text, media, cut, deadline, False)
    if filename is None and name is not None:
        fields.append([name, part.text])
    return part.text.encode("utf-8", "surrogatepass")


def _scrub_bytes(r: Redactor, data: bytes, deadline: Deadline) -> bytes:
    if not data:
        return data
    text = data.decode("latin-1")
    scrubbed = r.scrub(text, deadline)
    return data if scrubbed is text else scrubbed.encode("latin-1", "replace")
