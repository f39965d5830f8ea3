"""The redactor: headers, the request target and bodies, with the deployment's key: pure.

What it does to each part of an exchange, and why, is in docs/security.md. In short:

- a secret's value becomes `[redacted]` (MARK: passwords, PINs, one-time codes, card numbers,
  private keys, e-mail addresses) or a keyed fingerprint `hmac:<16 hex>` (FINGERPRINT: tokens,
  keys, sessions, cookies, Authorization), never anything derived from the value otherwise;
- fingerprints are HMAC-SHA256 under a key derived from the deployment's key and the class of
  the field (`header:authorization`, `cookie:sid`, `field:apikey`, `shape:jwt`, `path`), so a
  guess sent in one field cannot be matched against another field's fingerprints;
- a value that already looks like a fingerprint is fingerprinted again like any other.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import itertools
import re
import time
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, unquote_plus

from capture.record import FINGERPRINT_PREFIX, REDACTED_MARKER
from capture.redact.names import FINGERPRINT, MARK, URL_SECRETS, NameRules, fingerprint_class
from capture.redact.text import (
    BudgetExceeded,
    Deadline,
    Hit,
    TextScanner,
    field_class,
    is_card,
    is_token,
    merge,
    percent_unescape,
    raw_span,
    unescaped,
)

MARKER = REDACTED_MARKER
PREFIX = FINGERPRINT_PREFIX

# Headers whose value is a list of cookies: each value goes, the names stay.
_COOKIE_HEADERS = frozenset(("cookie", "cookie2", "set-cookie", "set-cookie2"))
# Headers of the form "<scheme> <credentials>": the scheme stays, the credentials go.
_AUTH_HEADERS = frozenset(("authorization", "proxy-authorization"))
AUTH_SCHEMES = frozenset((
    "basic", "bearer", "digest", "negotiate", "ntlm", "token", "apikey", "aws4-hmac-sha256",
    "hoba", "mutual", "scram-sha-1", "scram-sha-256", "vapid", "dpop", "mac", "oauth", "hawk",
    "gnap", "privatetoken", "sso-key", "splunk", "key"))
# Headers that carry a URL, whose path is looked at like the request's own (their query,
# fragment and user information are found in any header value by the text scanner).
URL_HEADERS = frozenset((
    "referer", "location", "content-location", "x-original-url", "x-rewrite-url",
    "x-original-uri", "x-forwarded-uri", "x-forwarded-prefix", "link", "refresh", "origin",
    "x-forwarded-path", "x-envoy-original-path"))

MAX_PARAMS = 10_000  # parameters listed per source; the raw text is redacted whatever this says
# What headers() does with a header, by its name (or a (MARK|FINGERPRINT, class) pair).
_PLAIN, _URL, _COOKIE, _AUTH, _SUBPROTOCOLS = object(), object(), object(), object(), object()


def deadline_after(seconds: float) -> Deadline:
    """A check that raises BudgetExceeded once `seconds` have passed."""
    end = time.perf_counter() + seconds

    def check() -> None:
        if time.perf_counter() > end:
            raise BudgetExceeded

    return check


@dataclass(frozen=True, slots=True)
class Policy:
    """What the redactor does where the rules leave a choice. Sizes are bytes.

    `unscanned`: "withhold" (default) or "keep" for bodies that cannot be scanned (binary,
    undecodable, over the budget, nested too deep). `form_files`: "withhold" (default) or
    "keep" (scanned like a body of their own type) for the file parts of multipart forms.
    `emails`: False keeps e-mail addresses. `budget_ms`: the most time one body may take.
    `body_max_bytes`: the most bytes a body is decoded to. `extra_mark`, `extra_fingerprint`:
    names of the deployment's own to redact; `safe`: names to keep.
    """

    unscanned: str = "withhold"
    form_files: str = "withhold"
    emails: bool = True
    budget_ms: float = 100.0
    body_max_bytes: int = 1 << 20
    params_body_max_bytes: int = 16 << 10
    extra_mark: tuple[str, ...] = ()
    extra_fingerprint: tuple[str, ...] = ()
    safe: tuple[str, ...] = ()


@dataclass(slots=True)
class Body:
    """A message's body as the record keeps it, and the parameters read from it."""

    text: str = ""
    encoding: str = "utf-8"  # of `text`: "utf-8" (text) or "base64"
    truncated: bool = False
    content_encoding: str = ""  # the Content-Encoding that was undone
    withheld: str | None = None  # why the body is not kept
    digest: str | None = None  # of the bytes on the wire, when withheld
    form: list[list[Any]] = field(default_factory=list)
    json: list[list[Any]] = field(default_factory=list)


class Redactor:
    def __init__(self, key: bytes, policy: Policy | None = None) -> None:
        self.key = key
        self.policy = policy or Policy()
        self.rules = NameRules(extra_mark=self.policy.extra_mark,
                               extra_fingerprint=self.policy.extra_fingerprint,
                               safe=self.policy.safe)
        self.scanner = TextScanner(self.rules, emails=self.policy.emails)
        self._class_keys: dict[str, bytes] = {}
        self._fingerprint_cached = functools.lru_cache(maxsize=4096)(self._fingerprint)
        self._header_kinds: dict[str, object] = {}
        self._clean: set[str] = set()
        self._clean_paths: set[str] = set()

    # --- values ---------------------------------------------------------------------------

    def fingerprint(self, value: str | bytes, cls: str) -> str:
        """`hmac:` and 16 hex digits of HMAC-SHA256 of `value` under the key of `cls`."""
        if type(value) is str and len(value) <= 256:
            # The same credentials come back on every request: most fingerprints are repeats.
            return self._fingerprint_cached(value, cls)
        return self._fingerprint(value, cls)

    def _fingerprint(self, value: str | bytes, cls: str) -> str:
        key = self._class_keys.get(cls)
        if key is None:
            key = hmac.digest(self.key, b"tapline/fingerprint/v2/" + cls.encode(
                "utf-8", "surrogatepass"), "sha256")
            if len(self._class_keys) < 4096:  # classes come from field names: bounded
                self._class_keys[cls] = key
        if isinstance(value, str):
            value = value.encode("utf-8", "surrogatepass")
        return PREFIX + hmac.digest(key, value, "sha256")[:8].hex()

    def replacement(self, value: str, action: str, cls: str) -> str:
        """The marker, or the value's fingerprint; a value anyone could guess (an e-mail
        address, a card number) gets the marker even where its field is fingerprinted: its
        fingerprint would tell who is in the bucket to anyone who sends it. So does base64
        of text holding a secret (Docker's X-Registry-Auth, a JSON principal)."""
        if action == MARK or guessable(value) or (
                value[:2] in ("ey", "ew") and len(value) <= _DECODED_MAX
                and self._hides_a_secret(value, None)):  # base64 of JSON
            return MARKER
        return self.fingerprint(value, cls)

    def apply(self, text: str, hits: list[Hit]) -> str:
        parts = []
        last = 0
        for start, end, action, cls in hits:
            parts.append(text[last:start])
            parts.append(self.replacement(text[start:end], action, cls))
            last = end
        parts.append(text[last:])
        return "".join(parts)

    def scrub(self, text: str, deadline: Deadline | None = None) -> str:
        """Free text with every secret the scanner finds replaced. Text with escapes that
        hide secrets (`%40`, `&quot;`, `\\u0070`) comes back decoded, redacted."""
        families = self.scanner.families(text)
        if not families:
            return text
        hits = self.scanner.hits(text, deadline, families)
        if "escapes" in families:
            hits = merge(hits + self._escaped_hits(text, deadline))
        return self.apply(text, hits) if hits else text

    def _hides_a_secret(self, value: str, deadline: Deadline | None) -> bool:
        """Whether a whole value is base64 (16 characters or more) of text in which the
        scanner finds a secret: a Kubernetes Secret's data, a base64 JSON principal."""
        if len(value) < 16 or not _BASE64.fullmatch(value):
            return False
        try:
            core = value.rstrip("=").replace("-", "+").replace("_", "/")
            decoded = base64.b64decode(core + "=" * (-len(core) % 4), validate=True)
            text = decoded.decode("utf-8")
        except (binascii.Error, ValueError):
            return False
        return bool(self.scanner.may_hold(text) and self.scanner.hits(text, deadline))

    def _escaped_hits(self, text: str, deadline: Deadline | None) -> list[Hit]:
        """The hits of `text`'s unescaped view, mapped back onto `text`: what an escape hid
        is replaced where it is, escapes and all, and nothing else of the text changes (an
        escaped `&lt;script&gt;` stays escaped)."""
        view, points = unescaped(text)
        if view == text:
            return []
        return [(*raw_span(points, start, end), action, cls)
                for start, end, action, cls in self.scanner.hits(view, deadline)]

    def scrub_many(self, strings: list[str], deadline: Deadline | None = None
                   ) -> list[str] | None:
        """`scrub` of each string, in one scan of them all joined by NUL (spans never cross
        one); None when nothing was found."""
        if not strings:
            return None
        joined = "\x00".join(strings)
        families = self.scanner.families(joined)
        if not families:
            return None
        hits = self.scanner.hits(joined, deadline, families)
        starts = list(itertools.accumulate((len(s) + 1 for s in strings), initial=0))
        out = list(strings)
        changed = False
        by_string: dict[int, list[Hit]] = {}
        for start, end, action, cls in hits:
            # A span may cover several strings (a PEM key split over a JSON array of lines):
            # each gets its part.
            first = bisect_right(starts, start) - 1
            last = max(first, bisect_right(starts, max(start, end - 1)) - 1)
            for i in range(first, min(last, len(strings) - 1) + 1):
                base = starts[i]
                part_start, part_end = max(start, base), min(end, starts[i + 1] - 1)
                if part_end > part_start or (part_end == part_start == base and i > first):
                    by_string.setdefault(i, []).append(
                        (part_start - base, part_end - base, action, cls))
        if "base64" in families:  # a value that is base64 of text holding a secret
            for i, string in enumerate(strings):
                if i not in by_string and self._hides_a_secret(string, deadline):
                    out[i] = MARKER
                    changed = True
        if "escapes" in families:  # the strings with escapes, each scanned decoded as well
            for i in {bisect_right(starts, m.start()) - 1
                      for m in self.scanner.escapes_in(joined)}:
                scrubbed = self.scrub(strings[i], deadline)
                if scrubbed != strings[i]:
                    out[i] = scrubbed
                    changed = True
                    by_string.pop(i, None)
        for i, found in by_string.items():
            out[i] = self.apply(strings[i], found)
            changed = True
        return out if changed else None

    # --- headers --------------------------------------------------------------------------

    def headers(self, headers: list[list[str]], deadline: Deadline | None = None
                ) -> list[list[str]]:
        """Headers with secrets' values replaced (in place, and returned): credential headers
        by name, cookies each, anything else by what the text scanner finds in it."""
        plain = []
        urls = False
        kinds = self._header_kinds
        clean = self._clean
        for i, pair in enumerate(headers):
            name, value = pair
            kind = kinds.get(name)
            if kind is None:
                kind = self._header_kind(name)
            if kind is _PLAIN:
                if value not in clean:
                    plain.append(i)
            elif kind is _URL:
                plain.append(i)
                urls = True
            elif kind is _COOKIE:
                pair[1] = self._cookies(value, name[:4].lower() == "set-")
            elif kind is _AUTH:
                pair[1] = self._authorization(value, "header:" + name.lower())
            elif kind is _SUBPROTOCOLS:
                pair[1] = self._subprotocols(value)
            else:
                action, cls = kind
                pair[1] = self.replacement(value, action, cls)
        if plain:
            values = [headers[i][1] for i in plain]
            scrubbed = self.scrub_many(values, deadline)
            if scrubbed is None:
                # Only plain headers: a URL-bearing one still has its path to be looked at.
                self._known_clean([v for i, v in zip(plain, values, strict=True)
                                   if kinds.get(headers[i][0]) is _PLAIN])
            else:
                for i, value in zip(plain, scrubbed, strict=True):
                    headers[i][1] = value
            if urls:
                for i in plain:
                    if kinds.get(headers[i][0]) is _URL:
                        headers[i][1] = self._url_paths(headers[i][1])
        return headers

    def _known_clean(self, values: list[str], clean: set[str] | None = None) -> None:
        """Remember plain header values the scanner found nothing in: they repeat on every
        request (Host, User-Agent, Accept, Server, Content-Type), and are then not scanned
        again. Only values found clean by the same rules go in, so the cache cannot let a
        secret through; it is bounded. Paths have a cache of their own (`clean`): a path is
        clean only once its segments were looked at too."""
        clean = self._clean if clean is None else clean
        if len(clean) > 4096:
            clean.clear()
        clean.update(v for v in values if len(v) <= 256)

    def _header_kind(self, name: str) -> object:
        """What to do with a header of this name (kept for the next one: names repeat)."""
        lowered = name.lower()
        if lowered in _COOKIE_HEADERS:
            kind = _COOKIE
        elif lowered == "sec-websocket-protocol":
            kind = _SUBPROTOCOLS
        elif lowered in _AUTH_HEADERS:
            kind = _AUTH
        elif action := self.rules.classify(name):
            kind = (action, "header:" + fingerprint_class(name))
        else:
            kind = _URL if lowered in URL_HEADERS else _PLAIN
        if len(self._header_kinds) < 4096:  # names come from clients: bounded
            self._header_kinds[name] = kind
        return kind

    def _subprotocols(self, value: str) -> str:
        """Sec-WebSocket-Protocol: browsers cannot set headers on a WebSocket, so clients
        send their token as a subprotocol ("access_token, <token>", "Authorization, <jwt>",
        "base64url.bearer..."). An item after one named as a secret's, and an item that reads
        as a token, are fingerprinted."""
        items = value.split(",")
        after_name = None
        changed = False
        for i, item in enumerate(items):
            word = item.strip()
            if after_name is not None or (len(word) >= 16 and (
                    is_token(word) or (self.scanner.may_hold(word) and self.scrub(word) != word))):
                items[i] = " " * (len(item) - len(item.lstrip())) + self.replacement(
                    word, FINGERPRINT, after_name or "header:sec-websocket-protocol")
                changed = True
                after_name = None
            elif self.rules.classify(word) or word.lower() in AUTH_SCHEMES:
                after_name = field_class(word)
        return ",".join(items) if changed else value

    def _authorization(self, value: str, cls: str) -> str:
        scheme, sep, credentials = value.strip().partition(" ")
        credentials = credentials.strip()
        if sep and scheme.lower() == "basic" and (user := _basic_user(credentials)) is not None:
            # user:password: the user is fingerprinted (the principal), the password is a
            # guessable value and goes whole; a fingerprint of both would be an oracle.
            return f"{scheme} {self.fingerprint(user, cls + ':user')}:{MARKER}"
        if sep and scheme.lower() in AUTH_SCHEMES and credentials:
            return f"{scheme} {self.replacement(credentials, FINGERPRINT, cls)}"
        return self.replacement(value, FINGERPRINT, cls)

    def _cookies(self, value: str, set_cookie: bool) -> str:
        if set_cookie:
            # Cookies folded into one line (`a=1; Path=/, b=2`) each; after a cookie come
            # attributes (Path, Expires, ...), kept but scanned like any text.
            out = []
            for one in _FOLDED.split(value):
                first, sep, attributes = one.partition(";")
                out.append(self._cookie(first) + sep + self.scrub(attributes))
            return ", ".join(out)
        return ";".join(self._cookie(part) for part in value.split(";"))

    def _cookie(self, part: str) -> str:
        name, eq, value = part.partition("=")
        if not eq:
            return self.fingerprint(part.strip(), "cookie:") if part.strip() else part
        if not value.strip():
            return part
        return f"{name}={self.replacement(value.strip(), FINGERPRINT, 'cookie:' + name.strip())}"

    def _url_paths(self, value: str) -> str:
        """The path segments of the URLs in a header value that are tokens by their shape."""
        value = _URL_PATH.sub(lambda m: m.group(1) + self._path_tokens(m.group(2)), value)
        return _RELATIVE_PATH.sub(lambda m: self._path_tokens(m.group()), value, count=1)

    # --- the request target ---------------------------------------------------------------

    def path(self, path: str, deadline: Deadline | None = None) -> str:
        """A URL path with whatever the text scanner finds (tokens by shape, matrix
        parameters, e-mail addresses) replaced, then segments that are high-entropy tokens
        fingerprinted. One pass each: what one put in, the other does not look at again."""
        if path in self._clean_paths:
            return path
        redacted = self._after_secret_segment(self._path_tokens(self.scrub(path, deadline)))
        if redacted == path:
            self._known_clean([path], self._clean_paths)
        return redacted

    def _after_secret_segment(self, path: str) -> str:
        """/otp/verify/123456, /pin/4321: after a segment named as a password's (or a
        one-time code's), the segments with digits in them are what it names."""
        if "/" not in path or not self.rules.may_hold(path.lower()):
            return path
        segments = path.split("/")
        after = False
        for i, segment in enumerate(segments):
            if after and len(segment) >= 4 and any(c.isdigit() for c in segment) \
                    and segment != MARKER:
                segments[i] = MARKER
            elif not after and 2 <= len(segment) <= 64 and self.rules.classify(
                    unquote(segment)) == MARK:
                after = True
        return "/".join(segments) if after else path

    def _path_tokens(self, path: str) -> str:
        if len(path) < 21:  # no segment can be long enough
            return path
        changed = False
        segments = path.split("/")
        for i, segment in enumerate(segments):
            if len(segment) < 16:
                continue
            decoded = unquote(segment) if "%" in segment else segment
            if is_token(decoded):
                segments[i] = self.fingerprint(decoded, "path")
                changed = True
        return "/".join(segments) if changed else path

    def target(self, path: str, query: str, deadline: Deadline | None = None
               ) -> tuple[str, str, list[list[str]]]:
        """The request's path and query string redacted, and the query's parameters."""
        query, pairs = self.pairs(query, deadline)
        return self.path(path, deadline), query, pairs

    def pairs(self, text: str, deadline: Deadline | None = None
              ) -> tuple[str, list[list[str]]]:
        """An urlencoded query or form redacted (each pair by its name, values also by what
        the scanner finds in them), and its pairs as they now read, at most MAX_PARAMS."""
        if not text:
            return text, []
        # "+" is a space once decoded: a card number sent as 4111+1111+... is one then.
        if not self.scanner.may_hold(text.replace("+", " ") if "+" in text else text) \
                and not _LONG_RUN.search(text):
            return text, plain_pairs(text)
        classify = self.rules.classify
        parts = text.split("&")
        names: list[str] = []
        values: list[str] = []
        redo: list[int] = []  # parts whose value the scanner looks at
        settings: dict[str, str] = {}  # the prefix of a setting named as a secret's
        for i, part in enumerate(parts):
            if deadline and not i % 1024:
                deadline()
            raw_name, eq, raw_value = part.partition("=")
            name = raw_name
            if "%" in raw_name or "+" in raw_name:  # double encoding too (p%2561ssword)
                name = unquote_plus(raw_name)
                name = percent_unescape(name) if "%" in name else name
            value = unquote_plus(raw_value) if "%" in raw_value or "+" in raw_value \
                else raw_value
            names.append(name)
            values.append(value)
            prefix, last = _last_part(name)
            if eq and last in _SETTING_NAME_PARTS and (named := classify(value)):
                # Parameters.member.1.ParameterKey=DbPassword, variable[key]=DB_PASSWORD: a
                # name, kept; the value of its setting (...ParameterValue=, ...Value=,
                # variable[value]=) is the secret.
                settings[prefix] = named
                continue
            action = (classify(name) or (MARK if name.lower() in URL_SECRETS else None)) \
                if eq else None
            if action is not None:
                if value:
                    values[i] = self.replacement(value, action, field_class(name))
                    parts[i] = f"{raw_name}={quote(values[i], safe=_SAFE)}"
            elif part:
                redo.append(i)
        if settings:
            for i in list(redo):
                prefix, last = _last_part(names[i])
                action = settings.get(prefix)
                if action is not None and last.endswith("value") and values[i]:
                    values[i] = self.replacement(values[i], action, "field:value")
                    parts[i] = f"{parts[i].partition('=')[0]}={quote(values[i], safe=_SAFE)}"
                    redo.remove(i)
        tokens = []
        for i in redo:  # a value (or a bare ?name) that is a random token: a capability
            which = values[i] if values[i] else names[i]
            if len(which) >= 20 and is_token(which):
                fingerprint = self.fingerprint(which, field_class(names[i]) if values[i]
                                               else "path")
                if values[i]:
                    values[i] = fingerprint
                    parts[i] = f"{parts[i].partition('=')[0]}={fingerprint}"
                else:
                    names[i] = parts[i] = fingerprint
                tokens.append(i)
        if tokens:
            redo = [i for i in redo if i not in set(tokens)]
        for i in redo:
            if "%25" in values[i]:
                # Encoded more than twice (a redirect inside a redirect): the value as it
                # reads once every layer is undone, where a secret in it would show.
                view = values[i]
                for _ in range(4):
                    if "%" not in view or (undone := unquote(view)) == view:
                        break
                    view = undone
                if (scrubbed := self.scrub(view, deadline)) != view:
                    values[i] = scrubbed
                    parts[i] = f"{parts[i].partition('=')[0]}={quote(scrubbed, safe=_SAFE)}"
        if redo:
            # Names too (a token sent as a bare `?eyJ...`), then the values.
            looked = [names[i] for i in redo] + [values[i] for i in redo]
            scrubbed = self.scrub_many(looked, deadline)
            if scrubbed is not None:
                n = len(redo)
                for j, i in enumerate(redo):
                    name, value = scrubbed[j], scrubbed[n + j]
                    if name != names[i] or value != values[i]:
                        names[i], values[i] = name, value
                        raw_name, eq, _ = parts[i].partition("=")
                        if name != unquote_plus(raw_name):
                            raw_name = quote(name, safe=_SAFE)
                        parts[i] = f"{raw_name}{eq}{quote(value, safe=_SAFE)}" if eq \
                            else raw_name
                text = "&".join(parts)
            else:
                text = "&".join(parts)
        else:
            text = "&".join(parts)
        pairs = [[n, v] for n, v, p in zip(names, values, parts, strict=True) if p]
        return text, pairs[:MAX_PARAMS]


_SAFE = ":[]"  # left as they are in a replaced value: fingerprints and markers stay readable
_URL_PATH = re.compile(r"((?:[A-Za-z][A-Za-z0-9+.\-]*:)?//[^/\s?#<>\"']*+)(/[^\s?#<>\"']*+)")
_RELATIVE_PATH = re.compile(r"(?<![^\s<=])/(?!/)[^\s?#<>\"']*+")  # "/a/b", "<...>", "url=/x"
# Set-Cookie lines folded into one: a comma, then the next cookie's name and "=" (not the
# comma inside an Expires date).
_FOLDED = re.compile(r",[ \t]*+(?=[!#$%&'*+\-.^_`|~0-9A-Za-z]++=)")


def _last_part(name: str) -> tuple[str, str]:
    """A parameter's name as what it is under and its last part, lower case:
    `member.1.ParameterKey` -> (member.1, parameterkey), `a[0][name]` -> (a[0], name)."""
    last = _LAST_PART.search(name).group()
    return name[:len(name) - len(last)].rstrip(".["), last.rstrip("]").lower()


def _basic_user(credentials: str) -> str | None:
    """The user of Basic credentials (base64 of user:password), or None."""
    try:
        decoded = base64.b64decode(credentials + "=" * (-len(credentials) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, _password = decoded.decode("utf-8", "replace").partition(":")
    return user if colon else None


def guessable(value: str) -> bool:
    """A whole value that is an e-mail address, a card number, or user:password, in the
    clear (user|password too, as "remember me" cookies have it) or in base64 (Docker's
    "auth", Basic credentials under another name). A password after the user stays a
    password: its fingerprint would let anyone test a guess of it."""
    if len(value) > 320 or not value:
        return False
    if "@" in value and _WHOLE_EMAIL.fullmatch(value) is not None:
        return True
    if (":" in value or "|" in value) and _USER_SECRET.fullmatch(value) \
            and not is_token(_USER_SECRET.fullmatch(value).group(1), 0.2):
        return True
    if "@" in value:
        return False
    if value[0] in "23456" and _CARD_VALUE.fullmatch(value) and is_card(value):
        return True
    return len(value) >= 8 and value[-1:] in "=0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ" \
        "abcdefghijklmnopqrstuvwxyz+/" and _basic_user(value) is not None


# The part of a name that holds a setting's name: Tags.member.1.Key=..., ...ParameterKey=
_SETTING_NAME_PARTS = frozenset(("key", "name", "parameterkey", "parametername", "optionname",
                                 "settingname", "variablename", "varname", "keyname"))
_LONG_RUN = re.compile(r"[A-Za-z0-9_\-]{20}")  # what could be a token under any name
_LAST_PART = re.compile(r"[^.\[\]]*+\]?$")  # the last part of a name: member.1.ParameterKey
_CARD_VALUE = re.compile(r"[0-9][0-9 .+\-]{11,30}+")
_BASE64 = re.compile(r"[A-Za-z0-9+/_\-]{16,}+={0,2}+")
_DECODED_MAX = 4096  # longer values are not decoded to look for a secret in them
# user:password, user|password: a user's name (no scheme, no URL), then what it hides
_USER_SECRET = re.compile(r"(?![A-Za-z][\w+.\-]*+:/)[^\s:|/]{1,64}+[:|]([^\s]{1,200}+)")
_WHOLE_EMAIL = re.compile(r"[\w.%+\-]{1,64}@[\w\-]+(?:\.[\w\-]+)+")


def plain_pairs(text: str) -> list[list[str]]:
    """The pairs of an urlencoded text, as parse_qsl gives them (blank values kept)."""
    out = []
    for part in text.split("&", MAX_PARAMS)[:MAX_PARAMS]:
        if not part:
            continue
        name, _, value = part.partition("=")
        if "%" in part or "+" in part:
            name, value = unquote_plus(name), unquote_plus(value)
        out.append([name, value])
    return out

