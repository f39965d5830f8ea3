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
import csv
import io
import logging
import re
from typing import Any
from urllib.parse import unquote

import orjson

from capture.redact import decode
from capture.redact.names import FINGERPRINT, MARK, URL_SECRETS
from capture.redact.redactor import (
    MARKER,
    Body,
    BudgetExceeded,
    Redactor,
    deadline_after,
)
from capture.redact.text import Deadline, TextScanner, cut_tail, field_class, is_card, is_token

log = logging.getLogger(__name__)

_JSON_TYPES = ("application/json", "text/json", "application/graphql-response+json")
_NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl",
                 "application/x-jsonlines", "application/json-seq")
_FORM = "application/x-www-form-urlencoded"
# Types whose bytes are text even without a charset (ISO-8859-1 when not UTF-8).
_TEXT_TYPES = ("application/xml", "application/javascript", "application/ecmascript",
               "application/graphql", "application/yaml", "application/x-yaml", "application/sql",
               "application/x-sh", "application/toml", _FORM, *_JSON_TYPES, *_NDJSON_TYPES)
# name=value&...: names and values of what form encoders write (not minified code's).
_FORM_SHAPE = re.compile(r"[\w.\-%+*\[\]]++=[^&\s\"'<>(){};,]*+"
                         r"(?:&[\w.\-%+*\[\]]*+(?:=[^&\s\"'<>(){};,]*+)?+)*+")
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
        if media.startswith("application/grpc-web-text"):
            # base64 of gRPC frames (protobuf): decoded, it is binary, withheld like any
            raise decode.Undecodable("binary (gRPC-Web text)")
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
    except Exception as e:  # a bug here must cost the body, never the record
        # Only the type: an exception's text can quote the body.
        log.error("redaction of a body failed (%s); the body is withheld", type(e).__name__)
        return _unscanned(r, body, wire, data, "redaction failed")


QUICK_BYTES = 4096  # bodies up to this size are first tried the quick way
# Characters no text carries (as in decode.looks_textual, where a few are let through).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")


def quick_text(r: Redactor, data: bytes, content_type: str) -> str | None:
    """A small, whole, uncoded body that is UTF-8 text with nothing any rule could find in it
    (most small answers): the text as it is. None when the long way must decide."""
    lowered = content_type.lower()
    if "multipart/" in lowered or ("charset" in lowered and decode.text_codec(
            media_type(content_type)[1].get("charset", "")) != "utf-8"):
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
        if scanner is not None and not decode.ascii_compatible(codec) and \
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
            elif "\n" in stripped.rstrip() and _NDJSON_SHAPE.match(stripped):
                redacted = _ndjson(r, text, deadline)  # JSON lines under a JSON type
        if redacted is None and (media == _FORM or _FORM_SHAPE.fullmatch(text)):
            redacted, pairs = r.pairs(text, deadline)
            if small and media == _FORM:
                # A form cut at the cap: its last pair is the start of one, perhaps of a
                # secret's value, which the text loses too (cut_tail)
                body.form = pairs[:-1] if cut and pairs and not text.endswith("&") else pairs
    if redacted is None and _YAML_SECRET.search(text):
        # A Kubernetes Secret in YAML: its data are base64 under neutral names.
        raise decode.Undecodable("a Kubernetes Secret manifest")
    if redacted is None and media in ("text/csv", "application/csv"):
        redacted = _csv(r, text, deadline)
    if redacted is None:
        redacted = r.scrub(text, deadline)
    body.text = cut_tail(redacted) if cut else redacted


_NOT_JSON = object()
_YAML_SECRET = re.compile(r"(?m)^[ \t\-]*+kind:[ \t]*+[\"']?Secret[\"']?[ \t]*+(?:#[^\n]*+)?\r?$")


def _csv(r: Redactor, text: str, deadline: Deadline) -> str | None:
    """A CSV export whose header names secret columns (`password`, `api_key`, `cvv`): those
    columns' values go in every row; the rest is scanned as text after. None when no column
    is a secret's (the text rules then do it all)."""
    first = text.split("\n", 1)[0]
    delimiter = max(",;\t|", key=first.count)
    header = next(csv.reader([first], delimiter=delimiter), [])
    actions = {i: action for i, name in enumerate(header)
               if (action := r.rules.classify(name.strip())) is not None}
    if not actions:
        return None
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
    for n, row in enumerate(csv.reader(io.StringIO(text), delimiter=delimiter)):
        if not n % 256:
            deadline()
        if n:
            for i, action in actions.items():
                if i < len(row) and row[i]:
                    row[i] = r.replacement(row[i], action, field_class(header[i]))
        writer.writerow(row)
    return r.scrub(out.getvalue(), deadline)
_NDJSON_SHAPE = re.compile(r"[\[{][^\n]*[\]}][ \t\r]*\n[ \t]*[\[{]")


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


def redact_json(r: Redactor, value: Any, deadline: Deadline, depth: int = 0) -> Any:
    """A parsed JSON value with every secret replaced: members by their names (any value
    type), strings and keys by what the text scanner finds in them, big integers that are
    card numbers, a value named by its neighbour (`{"name": "DB_PASSWORD", "value": ...}`,
    `["pin", 1234]`), JSON inside a string. Walks without recursion.

    A member whose name is a password's is replaced whole by the marker. One whose name is a
    token's or a key's has its scalars fingerprinted one by one, and what inside it is named
    like a password (`{"auth": {"user": ..., "password": ...}}`) still gets the marker: a
    fingerprint of the whole would let anyone test a guess of the password inside it."""
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
    token_keys: dict[str, str] = {}  # keys that are tokens, and their fingerprints
    # (node, the class its scalars are fingerprinted with, or None)
    stack: list[tuple[Any, str | None]] = [(value, None)]
    seen = next_check = 0
    while stack:
        node, inherited = stack.pop()
        seen += len(node)
        if seen >= next_check:
            deadline()
            next_check = seen + 4096
        if type(node) is dict:
            if "kind" in node:
                _kubernetes_secrets(node)
            if "kty" in node and type(node["kty"]) is str:
                # A JSON Web Key: public but for its private members, which go; the rest is
                # walked like any object, but not fingerprinted for the key's name above it.
                for member in _JWK_PRIVATE.intersection(node):
                    node[member] = MARKER
                inherited = None
            done = _named_value(r, node) if len(node) <= 64 else _NOTHING
            names.update(node)
            if inherited is not None:
                # {"sessions": {"<token>": {...}}}: under a secret's name, keys that read as
                # tokens are secrets too
                for key in node:
                    if len(key) >= 16 and key not in token_keys and is_token(key):
                        token_keys[key] = r.fingerprint(key, inherited)
            for key, item in node.items():
                if key in done:
                    continue
                action = judged.get(key, _UNJUDGED)
                if action is _UNJUDGED:
                    action = judged[key] = classify_name(key)
                kind = type(item)
                if action is None and inherited is None:
                    if kind is str:
                        strings.append(item)
                        where.append((node, key))
                    elif kind is dict or kind is list:
                        stack.append((item, None))
                    elif (kind is int or kind is float) and item >= 10**12 \
                            and _card_number(item):
                        node[key] = MARKER
                    continue
                if item is None or kind is bool:
                    continue
                if action == MARK:
                    node[key] = MARKER
                elif kind is dict or kind is list:
                    stack.append((item, field_class(key) if action else inherited))
                else:
                    node[key] = r.replacement(_canonical(item), FINGERPRINT,
                                              field_class(key) if action else inherited)
            continue
        if len(node) == 2 and type(node[0]) is str and node[1] is not None \
                and type(node[1]) is not bool and _name_like(node[0]) \
                and (pair := classify(node[0])) is not None:
            # ["password", "..."]: a pair in a list (form fields, header lists)
            node[1] = MARKER if pair == MARK else r.replacement(
                _canonical(node[1]), pair, field_class(node[0]))
            continue
        _argv(r, node, classify)
        for i, item in enumerate(node):
            kind = type(item)
            if kind is dict or kind is list:
                stack.append((item, inherited))
            elif inherited is not None:
                if item is not None and kind is not bool:
                    node[i] = r.replacement(_canonical(item), FINGERPRINT, inherited)
            elif kind is str:
                strings.append(item)
                where.append((node, i))
            elif (kind is int or kind is float) and item >= 10**12 and _card_number(item):
                node[i] = MARKER
    if depth < _EMBEDDED_DEPTH:
        # JSON inside a string (an annotation, a payload field) is walked like any, and its
        # string is then not scanned as text.
        kept_strings, kept_where = [], []
        for text, (node, key) in zip(strings, where, strict=True):
            inner = _json(text) if _looks_like_json(text) else _NOT_JSON
            if isinstance(inner, dict | list):
                node[key] = orjson.dumps(redact_json(r, inner, deadline, depth + 1)).decode()
            elif "kind" in text and _YAML_SECRET.search(text):
                node[key] = MARKER  # a Kubernetes Secret manifest in a string
            else:
                kept_strings.append(text)
                kept_where.append((node, key))
        strings, where = kept_strings, kept_where
    scrubbed = r.scrub_many(strings, deadline)
    if scrubbed is not None:
        for (node, key), new in zip(where, scrubbed, strict=True):
            node[key] = new
    renamed = r.scrub_many(sorted(names), deadline) if names else None
    if renamed is not None or token_keys:
        renames = dict(zip(sorted(names), renamed, strict=True)) if renamed else {}
        _rename_keys(value, {**renames, **token_keys})
    return value


def _name_like(text: str) -> bool:
    """A string that could be a field's name (not a line of a PEM block or a sentence)."""
    return len(text) <= 64 and not any(c in text for c in "\n\r\t") and "-----" not in text


_EMBEDDED_DEPTH = 3  # JSON in a string in a string in a string, at most
_JWK_PRIVATE = frozenset(("d", "p", "q", "dp", "dq", "qi", "k", "oth"))  # RFC 7518


def _kubernetes_secrets(node: dict) -> None:
    """A Kubernetes Secret holds its secrets base64-encoded under neutral keys (`data`,
    `stringData`): every one of those values gets the marker. So do the items of a
    SecretList, which the API sends without their own kind."""
    kind = node.get("kind")
    if kind == "Secret":
        secrets = [node]
    elif type(kind) is str and kind.endswith("SecretList") and type(node.get("items")) is list:
        secrets = [item for item in node["items"] if type(item) is dict]
    else:
        return
    for obj in secrets:
        for part in ("data", "stringData"):
            if type(obj.get(part)) is dict:
                obj[part] = {k: MARKER for k in obj[part]}


def _looks_like_json(text: str) -> bool:
    return len(text) >= 2 and text[0] in "{[" and text[-1] in "}]"


_UNJUDGED = object()


def _argv(r: Redactor, node: list, classify) -> None:
    """["--password", "...", ...]: a command line as a list; the value after an option whose
    name is a secret's, or after a tool's own password option (mysql's -p)."""
    short = _TOOL_PASSWORD_OPTIONS.get(_tool(node[0])) if node and type(node[0]) is str else None
    for i in range(len(node) - 1):
        option = node[i]
        if short and option in short and type(node[i + 1]) is str:
            node[i + 1] = MARKER
            continue
        if type(option) is str and option[:1] == "-" and len(option) <= 64 \
                and "=" not in option and type(node[i + 1]) is str \
                and (action := classify(option.lstrip("-"))) is not None:
            node[i + 1] = MARKER if action == MARK else r.replacement(
                node[i + 1], action, field_class(option.lstrip("-")))


# Short options that take a password, by tool (where -p is not a port or a path).
_TOOL_PASSWORD_OPTIONS = {
    "mysql": ("-p",), "mysqldump": ("-p",), "mariadb": ("-p",), "mysqladmin": ("-p",),
    "sshpass": ("-p",), "redis-cli": ("-a",),
    "mongo": ("-p",), "mongosh": ("-p",), "mongodump": ("-p",), "sqlcmd": ("-P",),
    "ldapsearch": ("-w",), "ldapmodify": ("-w",), "ldapadd": ("-w",), "smbclient": ("-U",),
    "keytool": ("-storepass", "-keypass"), "htpasswd": (),
}


def _tool(command: str) -> str:
    return command.rpartition("/")[2].lower()


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
# env, GitLab and Vercel variables, key/value lists), {"ParameterKey": ..., "ParameterValue":
# ...} (CloudFormation), {"Name": ..., "Type": "SecureString", "Value": ...} (AWS SSM). Its
# value goes when its name is a secret's, or when its type says it is one.
_NAME_WORDS = ("name", "key", "field", "param", "parameter", "variable", "var", "label",
               "setting", "option", "id", "path", "header", "property", "attribute", "type")
_NAME_MEMBERS = frozenset(w for n in _NAME_WORDS for w in (n, n.title(), n.upper()))
_VALUE_MEMBERS = frozenset(("value", "val", "data", "content", "default", "values", "secret",
                            "payload"))
_SECRET_TYPES = frozenset(("securestring", "secret", "password", "masked", "encrypted",
                           "concealed", "secret_text"))
# Flags by which an object says its value is secret (Terraform, Azure DevOps, GitLab).
_SECRET_FLAGS = frozenset(("sensitive", "issecret", "is_secret", "masked", "secure", "secret",
                           "hidden"))


def _named_value(r: Redactor, node: dict) -> frozenset[str]:
    """Redact the value of a setting object whose name (or type) says it is a secret's; the
    members it read as the name and the value, which the walk then leaves alone (the name is a
    name, not a key's value; the value is done)."""
    names = []
    name_keys = []
    values = []
    secret_type = False
    for key, item in node.items():
        if type(key) is not str:
            continue
        lowered = key.lower()
        if lowered in _VALUE_MEMBERS or (lowered.endswith("value") and len(lowered) > 5):
            values.append(key)
        elif type(item) is str and (lowered in _NAME_MEMBERS_LOWER or (lowered.endswith(
                ("key", "name")) and len(lowered) > 3)):
            names.append(item)
            name_keys.append(key)
        if (lowered == "type" and type(item) is str and item.lower() in _SECRET_TYPES) or (
                item is True and lowered in _SECRET_FLAGS):
            secret_type = True
    if not values or not (names or secret_type):
        return _NOTHING
    action = MARK if secret_type else None
    name = "value"
    for candidate in names:
        if (found := r.rules.classify(candidate)) is not None:
            action, name = found, candidate
            break
        if candidate.lower() in URL_SECRETS and "name" in node and len(node) <= 4:
            # {"name": "code", "value": ...}: a URL's or a form's parameter (HAR, Postman),
            # where OAuth's authorization code is a secret as it is in the URL itself
            action, name = MARK, candidate
            break
    if action is None:
        return frozenset(name_keys)
    for key in values:
        if node[key] is not None and type(node[key]) is not bool:
            node[key] = MARKER if action == MARK else r.replacement(
                _canonical(node[key]), action, field_class(name))
    return frozenset(name_keys + values)


_NOTHING: frozenset[str] = frozenset()


_NAME_MEMBERS_LOWER = frozenset(_NAME_WORDS)


def _canonical(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _card_number(value: Any) -> bool:
    """An integer (or a float with no fraction) that is a card number (timestamps in
    milliseconds start with 1: no card does)."""
    if type(value) is float and value.is_integer() and 1e12 <= value < 1e19:
        value = int(value)
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
# name="...", name*=utf-8''..., and RFC 2231's continuations (name*0="pass"; name*1="word"),
# which servers (Werkzeug, Go's mime, Python's email) join into one name.
_DISPOSITION_PARAM = re.compile(
    r"""(?i);\s*(name|filename)(?:\*(\d{1,3}))?(\*?)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))""")
_QUOTED_PAIR = re.compile(r"\\(.)")


def disposition_names(disposition: str) -> tuple[list[str], list[str]]:
    """Every spelling of a part's name and filename in a Content-Disposition value: plain,
    extended (RFC 5987) and joined from continuations (RFC 2231), most specific first. A
    part is a secret if any spelling says so: a client can send several that disagree."""
    found: dict[str, dict[str, str]] = {"name": {}, "filename": {}}
    pieces: dict[str, dict[int, str]] = {"name": {}, "filename": {}}
    for m in _DISPOSITION_PARAM.finditer(disposition):
        which, index, extended = m.group(1).lower(), m.group(2), m.group(3)
        value = m.group(4)
        value = _QUOTED_PAIR.sub(r"\1", value) if value is not None else m.group(5)
        if extended:  # charset'language'percent-encoded, the prefix on the first piece only
            if index in (None, "0") and value.count("'") >= 2:
                value = value.split("'", 2)[2]
            value = unquote(value, errors="replace")
        if index is None:
            found[which]["extended" if extended else "plain"] = value
        else:
            pieces[which][int(index)] = value
    names: tuple[list[str], list[str]] = ([], [])
    for which, out in zip(("name", "filename"), names, strict=True):
        if pieces[which]:
            out.append("".join(pieces[which][i] for i in sorted(pieces[which])))
        out.extend(found[which][k] for k in ("extended", "plain") if k in found[which])
    return names


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
    names, filenames = disposition_names(disposition.group().decode("latin-1")) \
        if disposition else ([], [])
    name = names[0] if names else None
    filename = filenames[0] if filenames else None
    typed = _PART_TYPE.search(head)
    content_type = typed.group(1).decode("latin-1").strip() if typed else ""
    media, options = media_type(content_type)
    transfer = _PART_ENCODING.search(head)
    if transfer and transfer.group(1).strip().lower() not in (b"7bit", b"8bit", b"binary"):
        return (WITHHELD_PART % len(content)).encode()  # base64 or quoted-printable parts
    action = None
    for spelling in names:
        if (action := r.rules.classify(spelling)) is not None:
            name = spelling
            break
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
