"""Which header and field names hold secrets, told by the words they are made of: pure.

A name is split into words (`X-Auth-Token` -> x, auth, token; `userPassword` -> user,
password; `APIKey` -> api, key) and judged by rules on those words and on the name run
together (`accesstoken`), so that names nobody listed are caught by what they say:

- MARK: the value is replaced by a fixed marker and nothing else. Values people choose and
  can guess (passwords, PINs, one-time codes, card codes, secrets, credentials): a
  fingerprint of a guessable value would let anyone with the bucket test guesses.
- FINGERPRINT: the value becomes a keyed fingerprint, so that two requests with the same
  token, key, session or cookie can be told to be the same without the value itself.
- None: kept.

Short words (`key`, `pass`, `pin`, `sid`, `sig`, `otp`) count only as whole words or in a
few compounds (`apikey`, `userpass`), so that `monkey`, `keyboard`, `passenger`, `compass`,
`spinner`, `sidebar` and `design` are kept; `auth` does not match the `author` family.
Names that say something about a secret rather than hold one are kept: a last word such as
`type`, `endpoint`, `timeout` (`token_type`, `token_endpoint`), a data or public key
(`public_key`, `sort_key`), a count of tokens (`max_tokens`); and a short list of whole
names (`WWW-Authenticate`). Every rule needs one
of `ROOTS` in the name: the scanners use that to skip text that cannot hold a secret name.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

MARK = "mark"
FINGERPRINT = "fingerprint"

# Every name a rule below redacts holds one of these (lower case). tests/unit check it.
ROOTS = ("pass", "pwd", "pw", "secret", "credential", "token", "auth", "key", "sess", "sid",
         "sig", "cookie", "csrf", "xsrf", "bearer", "jwt", "hmac", "assertion", "pin", "otp",
         "mfa", "2fa", "cvv", "cvc", "csc", "ssn", "code", "kennwort", "contrase", "verifier",
         "saml", "ticket", "senha", "wachtwoord", "haslo", "hasło", "losenord", "lösenord",
         "пароль", "pswd", "passwrd", "social", "answer", "mnemonic", "seed", "phrase",
         "nonce", "honeycomb", "jfrog", "clave", *(
             # "password" in more languages: a root each (the part that always shows)
             "passord", "adgangskode", "salasana", "heslo", "parola", "şifre", "sifre",
             "jelszó", "jelszo", "jelszav", "lozinka", "лозинка", "geslo", "parool",
             "slaptažodis", "lykilorð", "wagwoord", "парола", "密码", "密碼", "口令",
             "パスワード", "暗証番号", "비밀번호", "암호", "סיסמ", "كلمة", "رمز", "khẩu",
             "sandi", "συνθηματικό", "πρόσβασης", "գաղտնաբառ", "პაროლი", "รหัสผ่าน",
             "पासवर्ड", "parolă"))

_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")

# Run-together forms, searched in the name with its words joined (`x_user_password` ->
# `xuserpassword`).
_MARK_IN = re.compile(
    r"passwor|passwd|passphrase|passcode|pwd|secret(?!ar)|credential|pincode|pinnumber|2fa"
    r"|motdepasse|kennwort|contrase|senha|wachtwoord|haslo|hasło|losenord|lösenord|пароль"
    r"|passord|adgangskode|salasana|heslo|parol[aă]|[şs]ifre|jelsz[oó]|jelszav|lozinka"
    r"|лозинка|geslo|parool|slaptažodis|lykilorð|wagwoord|парола|密码|密碼|口令|パスワード"
    r"|暗証番号|비밀번호|암호|סיסמ|كلمة[\s_\-]?(?:ال)?(?:مرور|سر)|رمز[\s_\-]?عبور"
    r"|mật[\s_\-]?khẩu|kata[\s_\-]?sandi|συνθηματικό|κωδικός[\s_\-]?πρόσβασης|գաղտնաբառ"
    r"|პაროლი|รหัสผ่าน|पासवर्ड"
    r"|pswd|passwrd|socialsecurity|securityanswer|secretanswer|mnemonic|seedphrase"
    r"|recoveryphrase|(?:sms|email|mail|totp|hotp|auth|login|mfa)otp"
    r"|(?:card|user|atm|sim|my|account)pin"
    r"|(?:verification|security|confirmation|reset|recovery|backup|activation|login|auth|sms"
    r"|otp|mfa|onetime|pairing|magic|access|device|invite|invitation)code")
_FINGERPRINT_IN = re.compile(
    r"auth(?!or(?!i[sz]))|token(?!i[sz])|session|sessid|cookie|csrf|xsrf|signature|bearer"
    r"|jwt|hmac|assertion|apikey|accesskey|saml|wpnonce")
# Words next to "pass" that make it something else than a password.
_NOT_A_PASSWORD = frozenset(("through", "thru", "boarding", "bus", "season", "day", "ski",
                             "event", "hall", "back", "fail", "rate", "by"))
# Whole words.
_MARK_WORDS = frozenset(("pass", "pw", "pin", "otp", "totp", "hotp", "mfa", "2fa",
                         "cvv", "cvv2", "cvc", "cvc2", "csc", "ssn", "verifier", "clave"))
_FINGERPRINT_WORDS = frozenset(("key", "keys", "sid", "sig", "sess"))
# Words that name a secret only as the last word (`sign` alone or `req_sign` is a signature;
# `sign_in`, `sign_up` are not).
_LAST_WORDS = frozenset(("sign",))
# Compounds: a known first part run into a short word (`userpass`, `dbpin`, `signingkey`).
_MARK_COMPOUND = re.compile(
    r"(?:user|db|admin|root|login|account|my|app|service|master|wifi|ftp|smtp|mail|ssh|sudo"
    r"|new|old|current|confirm|enc)(?:pass|pin|pw)")
_FINGERPRINT_COMPOUND = re.compile(
    r"(?:api|access|private|secret|signing|sign|encryption|enc|master|client|app|license"
    r"|licence|admin|root|user|service|ssh|gpg|pgp|partner|subscription|consumer|shared"
    r"|auth|session|pass|secure|crypto|cipher|account|developer|dev|live|prod|test|webhook"
    r"|server|device|instance|write|read|ingest|deploy|host|aws|gcp|azure|stripe|twilio"
    r"|sendgrid|github|gitlab|slack|openai|anthropic|mailgun|mapbox|maps)(?:keys?|sig|sid)")
# After one of these, "code" is a one-time code. Alone it is mostly an error or status code
# ({"code": 404}); OAuth's authorization code travels as `code=` in a URL or form, which the
# redactor's URL and form rules take as a secret (`URL_SECRETS`).
CODE_QUALIFIERS = frozenset((
    "verification", "verify", "security", "otp", "mfa", "2fa", "sms", "reset", "confirmation",
    "confirm", "recovery", "backup", "activation", "login", "onetime", "one", "auth",
    "authorization", "access", "device", "user", "pairing", "passcode", "magic", "factor",
    "invite", "invitation"))

# A fingerprint-class name is kept when it names something about the secret rather than the
# secret: its last word is one of these (`token_type`, `token_endpoint`, `session_timeout`),
SAFE_LAST_WORDS = frozenset((
    "type", "types", "kind", "count", "counts", "limit", "limits", "usage", "expires",
    "expiry", "expiration", "ttl", "timeout", "lifetime", "length", "size", "endpoint", "url",
    "uri", "method", "version", "algorithm", "alg", "format", "name", "names", "policy",
    "mode", "scope", "scopes", "required", "enabled", "hint", "id_type", "param", "domain",
    "banner", "consent", "notice", "text"))
# A password-class name is kept on fewer of them: its last word says what the value is about,
# and none of these can be the secret itself (not `hint`, `hash`, `reset`: they may).
MARK_SAFE_LAST_WORDS = frozenset((
    "policy", "policies", "length", "type", "types", "required", "enabled", "disabled",
    "expires", "expiry", "expiration", "ttl", "timeout", "lifetime", "algorithm", "alg",
    "format", "strength", "complexity", "rules", "count", "attempts", "supported",
    "endpoint", "url", "uri", "flow", "provider", "mode", "methods"))
# or it is one of these run into `key`/`keys` (a public or a data key, not a credential; not
# primary/secondary, which Azure's subscription and storage keys are called),
SAFE_KEY_PREFIXES = frozenset((
    "public", "foreign", "sort", "partition", "cache", "idempotency", "object", "routing",
    "row", "range", "shard", "hash", "dedup", "translation", "i18n", "lookup",
    "composite", "natural", "surrogate", "unique", "authorized", "known"))
# or it counts tokens (`max_tokens`, `prompt_tokens`: the words of language-model APIs).
TOKEN_COUNTS = frozenset((
    "max", "min", "prompt", "completion", "total", "input", "output", "cached", "reasoning",
    "audio", "accepted", "rejected", "num", "remaining"))
# Credential headers of well-known services whose names say nothing of a secret.
KNOWN_CREDENTIAL_HEADERS = frozenset(("x-honeycomb-team", "x-jfrog-art-api"))
# Whole names known to be safe although a rule matches them.
SAFE_NAMES = frozenset((
    "www-authenticate", "proxy-authenticate", "access-control-allow-credentials",
    "public-key-pins", "public-key-pins-report-only"))


# Names that are secrets in URLs and urlencoded forms only (OAuth 2's `code`), not in JSON or
# prose, where they mean something else.
URL_SECRETS = frozenset(("code", "ticket"))


def words(name: str) -> list[str]:
    """The words of a name, lower case: `X-Amz-Security-Token` -> x, amz, security, token."""
    return [w.lower() for w in _WORD.findall(name)]


class NameRules:
    """Judges names; `extra_mark` and `extra_fingerprint` add names of the deployment's own
    (a name holding one of them, lower case, is redacted), `safe` adds known-safe names."""

    def __init__(self, *, extra_mark: Iterable[str] = (), extra_fingerprint: Iterable[str] = (),
                 safe: Iterable[str] = ()) -> None:
        self.extra_mark = tuple(n.strip().lower() for n in extra_mark if n.strip())
        self.extra_fingerprint = tuple(n.strip().lower() for n in extra_fingerprint
                                       if n.strip())
        self.safe = SAFE_NAMES | {n.strip().lower() for n in safe if n.strip()}
        self.roots = ROOTS + self.extra_mark + self.extra_fingerprint
        # Names repeat endlessly (the same headers and fields on every request); the ones an
        # attacker invents are bounded by the cache's size, and long ones are not kept.
        self._cached = functools.lru_cache(maxsize=8192)(self._classify)

    def classify(self, name: str) -> str | None:
        """MARK, FINGERPRINT or None for one name."""
        return self._cached(name) if len(name) <= 128 else self._classify(name)

    def _classify(self, name: str) -> str | None:
        lowered = name.lower()
        if lowered in self.safe:
            return None
        if any(extra in lowered for extra in self.extra_mark):
            return MARK
        if any(extra in lowered for extra in self.extra_fingerprint):
            return FINGERPRINT
        if not any(root in lowered for root in ROOTS):
            return None
        if lowered in KNOWN_CREDENTIAL_HEADERS:
            return FINGERPRINT
        parts = words(name)
        joined = "".join(parts)
        if "_".join(parts) in self.safe or "-".join(parts) in self.safe:
            return None
        if len(parts) > 1 and parts[-1] in MARK_SAFE_LAST_WORDS:
            return None  # password_policy, pin_length, otp_type: about the secret, not it
        # The name as it is too: words() keeps ASCII letters only (пароль, lösenord).
        if _MARK_IN.search(joined) or _MARK_IN.search(lowered):
            return MARK
        for i, word in enumerate(parts):
            if word == "pass" and _NOT_A_PASSWORD.intersection(parts[max(0, i - 1):i + 2]):
                continue  # pass_through, boarding_pass, X-Pass-Through
            if word in _MARK_WORDS or _MARK_COMPOUND.fullmatch(word):
                return MARK
            if word == "code" and i and parts[i - 1] in CODE_QUALIFIERS:
                return MARK
        found = _FINGERPRINT_IN.search(joined) is not None or parts[-1] in _LAST_WORDS or any(
            word in _FINGERPRINT_WORDS or _FINGERPRINT_COMPOUND.fullmatch(word)
            for word in parts)
        if not found or parts[-1] in SAFE_LAST_WORDS:
            return None
        if parts[-1] in ("key", "keys") and len(parts) > 1 and parts[-2] in SAFE_KEY_PREFIXES:
            return None
        if parts[-1] == "tokens" and len(parts) > 1 and parts[-2] in TOKEN_COUNTS:
            return None
        return FINGERPRINT

    def may_hold(self, lowered_text: str) -> bool:
        """Whether text (lower case) holds any root, so a name in it could be a secret's."""
        return any(root in lowered_text for root in self.roots)


def fingerprint_class(name: str) -> str:
    """The class of a field's fingerprints: its words run together (`api_key`, `apiKey` and
    `Api-Key` are one class), so one field's fingerprints only match that field's."""
    return "".join(words(name)) or name.lower()
