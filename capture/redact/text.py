"""Secrets in free text, found in time linear in its length: pure.

`TextScanner.hits(text)` returns the spans to replace, each with what to put there:

- values by shape, whatever surrounds them: PEM private keys (to their END line, or to the end
  of the text when it was cut), JWTs, tokens with well-known prefixes (cloud, SCM and SaaS
  keys), `Bearer`/`Basic` credentials, a URL's user information, `curl -u user:password`,
  e-mail addresses and Luhn-valid card numbers;
- `name=value`, `name: value`, `"name": "value"`, `--name=value` pairs whose name is a
  secret's (`capture.redact.names`), as in logs, config files (YAML block values too), query
  strings, command lines, JSON in a string;
- markup: the text of elements with a secret's name (`<wsse:Password>`, `<token>`) or with a
  `name`/`key` attribute that names one (`<property name="password">`), the element after a
  `<key>`/`<name>` that names one (plist, XML-RPC), and the `value`/`content` of tags whose
  `name`/`id`/`key`/`property` names one (`<input name="csrf_token" value="...">`).

Every pattern is written to run in linear time on Python's `re`: possessive quantifiers,
literal or single-class starts the engine skips to quickly, look-behinds after them, no nested
ambiguity, and every scan that could restart from many places resumes after the last span.
`families` is the quick test first: one RE2 pass (a set of patterns looser than the rules)
tells which rules can find anything at all; text where none can is let through as it is, and
only the rules that can run.

Escapes could spell a name or a token without its letters (`\\u0070`, `&#112;`, `&quot;`,
`%70`, `%40`): text holding them is also scanned decoded (`views`), and where the decoded text
has secrets, the redacted decoded text is what is kept.

Spans never cross a NUL: callers join many strings with NUL between them and scan them in one
pass.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import functools
import html
import itertools
import re
from collections.abc import Callable
from urllib.parse import unquote

import re2

from capture.redact.names import (
    CODE_QUALIFIERS,
    FINGERPRINT,
    MARK,
    URL_SECRETS,
    NameRules,
    fingerprint_class,
)

# A hit: (start, end, action, fingerprint class). Tuples, not objects: there can be many.
Hit = tuple[int, int, str, str]

Deadline = Callable[[], None]  # raises BudgetExceeded when the time is up
MAX_HITS = 50_000  # in one text, where a deadline applies: more is a hostile body


class BudgetExceeded(Exception):
    """Redaction took longer than the budget allows (or would have: too many secrets)."""

# Literals that start a token of a known shape (lower case; the test is case-insensitive).
SHAPE_LITERALS = (
    "-----begin", "---- begin", "putty-user-key-file-",
    "eyj", "eya", "ewo", "akia", "asia", "abia", "acca", "agpa", "aida", "aipa",
    "anpa", "anva", "apka", "aroa", "asca", "ghp_", "gho_", "ghu_", "ghs_", "ghr_",
    "github_pat_", "glpat-", "gldt-", "glrt-", "glptt-", "glcbt-", "gloas-", "glimt-", "glft-",
    "glsoat-", "glagent-", "glsa_", "glc_", "xox", "xapp-", "sk_", "rk_", "pk_", "whsec_",
    "aiza", "ya29.", "1//", "sk-", "sg.", "npm_", "pypi-", "hf_", "dapi", "atatt3", "sq0",
    "lin_api_", "pmak-", "shpat_", "shpca_", "shppa_", "shpss_", "doo_v1_", "dop_v1_",
    "dor_v1_", "hvs.", "hvb.", "hvr.", "age-secret-key-", "nrak-", "dp.", "bearer", "basic",
    "@", "-u ", "--user", "gocspx-", "key-", "hrku-", "base64url.", "hooks.slack", "discord",
)
# Escapes that could spell a name or a token without its letters showing: JSON's \u, HTML's
# character references, and percent-encoded letters, digits and URL delimiters.
_ESCAPES = (r"\\u[0-9a-f]{4}|\\u\{|\\x[2-7][0-9a-f]|&#|&[a-z]{2,6};"
            r"|%(?:[2-7][0-9a-f])")


def _trie(words: list[str]) -> str:
    """A regex alternation of literal words, factored by their first letters (much faster
    than a flat alternation on Python's re, which tries every branch at every position)."""
    groups: dict[str, list[str]] = {}
    for word in words:
        groups.setdefault(word[0], []).append(word[1:])
    alternatives = []
    for first, rests in sorted(groups.items()):
        if "" in rests:  # the shorter word already matches whatever follows
            alternatives.append(re.escape(first))
        elif len(rests) == 1:
            alternatives.append(re.escape(first) + re.escape(rests[0]))
        else:
            alternatives.append(re.escape(first) + "(?:" + _trie(rests) + ")")
    return "|".join(alternatives)


# --- values by shape --------------------------------------------------------------------

_PEM = re.compile(r"----(-?+) ?+BEGIN ([A-Z0-9 ]{1,64}+)----\1")
_DATA_URI = re.compile(r"data:[\w/+.\-]*+(?:;[\w.\-]++=[^;,\s\x00]*+)*+;base64,"
                       r"([A-Za-z0-9+/]++=*+)")
_DATA_URI_MAX = 65536  # characters of a data URI decoded to be scanned (the rest goes too)
# PuTTY's key files: the private lines, to the MAC line after them
_PUTTY = re.compile(r"PuTTY-User-Key-File-[0-9]++:[^\x00]*?Private-Lines:[ \t]*+[0-9]++"
                    r"[^\x00]*?(?:Private-MAC:[^\x00\r\n]*+|(?=\x00)|$)")
# DER in base64 without PEM's armour: a SEQUENCE whose first member is a small INTEGER (the
# version of PKCS#1, SEC1 and PKCS#8 private keys, and of PKCS#12 files). Certificates,
# public keys and requests start with another SEQUENCE instead.
_DER_B64 = re.compile(r"M(?<![A-Za-z0-9+/]M)[A-Za-z0-9+/]{40,}+={0,2}+")
_PRIVATE_VERSIONS = (b"\x02\x01\x00", b"\x02\x01\x01", b"\x02\x01\x03")
_JWT = re.compile(r"e(?<![A-Za-z0-9_\-]e)(?:yJ|yA|wo)[A-Za-z0-9_\-]{4,}+\.[A-Za-z0-9_\-]{4,}+\."
                  r"[A-Za-z0-9_\-]*+(?:\.[A-Za-z0-9_\-]*+){0,2}+")
_KEYS = [re.compile(p) for p in (
    r"A(?<![A-Za-z0-9]A)(?:KIA|SIA|BIA|CCA|GPA|IDA|IPA|NPA|NVA|PKA|ROA|SCA)"
    r"[A-Z0-9]{16}(?![A-Za-z0-9])",
    r"g(?<![A-Za-z0-9_]g)(?:h[pousr]_[A-Za-z0-9]{30,}+|ithub_pat_[A-Za-z0-9_]{22,}+"
    r"|l(?:pat|dt|rt|ptt|cbt|oas|imt|ft|soat|agent)-[A-Za-z0-9_\-]{20,}+"
    r"|l(?:sa|c)_[A-Za-z0-9_=+/\-]{20,}+)",
    r"x(?<![A-Za-z0-9_]x)(?:ox[abposre]|app)-[A-Za-z0-9\-]{10,}+",
    r"[srpw](?<![A-Za-z0-9_][srpw])(?:[skr]_(?:live|test)_[A-Za-z0-9]{10,}+"
    r"|hsec_[A-Za-z0-9]{20,}+)",
    r"[Ay1](?<![A-Za-z0-9_\-][Ay1])(?:Iza[0-9A-Za-z_\-]{30,}+|a29\.[0-9A-Za-z_\-]{20,}+"
    r"|//[0-9A-Za-z_\-]{30,}+)",
    r"sk-(?<![A-Za-z0-9_\-]sk-)[A-Za-z0-9_\-]{20,}+",
    r"SG\.(?<![A-Za-z0-9_\-]SG\.)[A-Za-z0-9_\-]{16,}+\.[A-Za-z0-9_\-]{16,}+",
    *(rf"{p}(?<![A-Za-z0-9_\-]{p}){rest}" for p, rest in (
        (r"npm_", r"[A-Za-z0-9]{36}"), (r"pypi-", r"AgE[A-Za-z0-9_\-]{50,}+"),
        (r"hf_", r"[A-Za-z0-9]{30,}+"), (r"dapi", r"[a-f0-9]{32}"),
        (r"ATATT3", r"[A-Za-z0-9_=\-]{20,}+"), (r"sq0", r"(?:atp|csp)-[A-Za-z0-9_\-]{22,}+"),
        (r"lin_api_", r"[A-Za-z0-9]{40}"), (r"PMAK-", r"[a-f0-9]{24}-[a-f0-9]{34}"),
        (r"shp", r"(?:at|ca|pa|ss)_[a-fA-F0-9]{32}"), (r"do", r"[opr]_v1_[a-f0-9]{64}"),
        (r"hv", r"[sbr]\.[A-Za-z0-9_\-]{20,}+"), (r"AGE-", r"SECRET-KEY-1[0-9A-Z]{58}"),
        (r"NRAK-", r"[A-Z0-9]{27}"), (r"dp\.", r"(?:pt|st|sa|ct)\.[A-Za-z0-9]{40,}+"),
        (r"GOCSPX-", r"[A-Za-z0-9_\-]{20,}+"), (r"key-", r"[0-9a-f]{32}"),
        (r"SK", r"[0-9a-fA-F]{32}(?![0-9a-fA-F])"), (r"sk\.", r"eyJ[A-Za-z0-9_\-.]{20,}+"),
        (r"EAA", r"[A-D][A-Za-z0-9_\-]{40,}+"), (r"HRKU-", r"[A-Za-z0-9_\-]{20,}+"),
        (r"base64url\.bearer\.authorization\.k8s\.io\.", r"[A-Za-z0-9_\-]++"))),
    # Telegram and Discord bot tokens; Slack and Discord webhooks (the URL is the secret)
    r"[0-9](?<![0-9][0-9])[0-9]{7,9}:AA[A-Za-z0-9_\-]{33,}+",
    r"[MNO](?<![A-Za-z0-9_\-][MNO])[A-Za-z0-9_\-]{23,25}\.[A-Za-z0-9_\-]{6}\.[A-Za-z0-9_\-]{27,38}",
    r"hooks\.slack\.com/services/[A-Za-z0-9/]{20,}+",
    r"discord(?:app)?\.com/api/webhooks/[0-9]++/[A-Za-z0-9_\-]++",
    # Alibaba, JFrog, Azure client secrets, Mailchimp, Dropbox, Terraform Cloud
    r"LTAI(?<![A-Za-z0-9_\-]LTAI)[A-Za-z0-9]{12,30}+",
    r"AKCp(?<![A-Za-z0-9_\-]AKCp)[A-Za-z0-9]{60,}+",
    r"[A-Za-z0-9_.\-]{3}8Q~[A-Za-z0-9_~.\-]{30,}+",
    r"[0-9a-f](?<![0-9a-f][0-9a-f])[0-9a-f]{31}-us[0-9]{1,2}(?![0-9])",
    r"sl\.(?<![A-Za-z0-9_\-.]sl\.)[A-Za-z0-9_\-]{60,}+",
    r"[A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_=\-]{40,}+",
    # Airtable's personal access tokens, Braintree's access tokens
    r"pat(?<![A-Za-z0-9_\-]pat)[A-Za-z0-9]{14}\.[a-f0-9]{64}",
    r"access_token\$(?:production|sandbox)\$[0-9A-Za-z]{16}\$[0-9a-f]{32}",
)]
# The convention most issuers now follow: a short lower-case prefix naming the issuer (and
# the token's kind), a separator, and the random part: dckr_pat_..., sbp_..., xai-...
# Whatever the prefix, the rest is taken for a token when it reads as random (`is_token`),
# or is 32 hex digits or more.
_PREFIXED_TOKEN = re.compile(r"[a-z](?<![A-Za-z0-9_\-.][a-z])[a-z0-9]{1,11}+[_\-]"
                             r"([A-Za-z0-9_\-]{20,}+)")
# Runs of hex digits of one case, 32 or more: a token when they hold a letter and a digit
# (`hex_token_in`). Found run by run, never with look-aheads, which made each search quadratic
# in the length of a long run.
_HEX_RUNS = (re.compile(r"[0-9a-f]{32,}+"), re.compile(r"[0-9A-F]{32,}+"))
_DIGITS_ONLY = re.compile(r"[0-9]++")
_LETTERS_ONLY = re.compile(r"[A-Fa-f]++")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# Whether a text holds any of the prefixes above (RE2, case as written).
_KEY_GATE = ("(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|APKA|AROA|ASCA)[A-Z0-9]"
             "|gh[pousr]_|github_pat_|gl(?:pat|dt|rt|ptt|cbt|oas|imt|ft|soat|agent)-|gl(?:sa|c)_"
             "|xox[abposre]-|xapp-|[skr]k_(?:live|test)_|whsec_|AIza|ya29\\.|1//|sk-|SG\\."
             "|npm_|pypi-|hf_|dapi|ATATT3|sq0|lin_api_|PMAK-|shp(?:at|ca|pa|ss)_|do[opr]_v1_"
             "|hv[sbr]\\.|AGE-SECRET|NRAK-|dp\\.|GOCSPX-|key-[0-9a-f]{8}|SK[0-9a-fA-F]{32}"
             "|sk\\.eyJ|EAA[A-D]|HRKU-|base64url\\.bearer\\.|[0-9]{8}:AA|hooks\\.slack\\.com/"
             "|discord(?:app)?\\.com/api/webhooks/|[MNO][A-Za-z0-9_\\-]{23,25}\\.[A-Za-z0-9_\\-]{6}\\."
             "|LTAI|AKCp|8Q~|pat[A-Za-z0-9]{14}\\.|access_token\\$|[0-9a-f]{4}-us[0-9]|sl\\.[A-Za-z0-9_\\-]{8}|\\.atlasv1\\.")
_USERINFO = re.compile(r"://([^\x00\s/?#@<>\"']++)@")
_URL_IN_TEXT = re.compile(r"://[^\x00\s/?#<>\"']*+(/[^\x00\s?#<>\"']*+)")
_BEARER = re.compile(r"[Bb](?<![A-Za-z0-9][Bb])(?i:earer)[ \t]++([A-Za-z0-9._~+/\-]{8,}+=*+)")
_BASIC = re.compile(r"[Bb](?<![A-Za-z0-9][Bb])(?i:asic)[ \t]++([A-Za-z0-9+/]{8,}+=*+)")
_CURL_USER = re.compile(r"-(?<![^\s\x00]-)(?:u|-user)[ \t=]++[^\s\x00:\"']++:([^\s\x00\"']++)")
_EMAIL = re.compile(r"@([\w\-]++(?:\.[\w\-]++)++)")
# logo@2x.png, app@1.2.3.tgz: file names, not addresses
_FILE_TYPES = frozenset(("png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "css", "js", "mjs",
                         "map", "json", "txt", "html", "htm", "xml", "pdf", "tgz", "gz", "woff",
                         "woff2", "ttf", "mp4", "mp3", "wav", "webm", "avif"))
_LOCAL_PART = re.compile(r"[\w.%+\-]{1,64}+")
# A run of digits with single separators between them (a card is looked for in each).
# Runs are taken 200 characters at a time, the next piece starting a card's length back.
_RUN_PIECE = 200
_DIGITS = re.compile(rf"[2-6](?<![0-9][2-6])[0-9](?:[ .+\-]?[0-9]){{11,{_RUN_PIECE // 2}}}+")
_SEPARATOR = re.compile(r"[ .+\-]")
# The same without look-arounds, for RE2: whether a text has any candidate at all.
_CARD_GATE = r"[2-6][0-9](?:[ .+\-]?[0-9]){11}"

# --- name = value ------------------------------------------------------------------------

_NAME_SEP = re.compile(
    r"(?<![\w.%\-<])(?<!</)(?<![A-Za-z0-9]:)-{0,2}+((?:[^\W\d]|%)[\w.%\-]*+)"
    r"(?:\\?[\"']|\]){0,2}+"
    r"[ \t]*+(?::=|=>|[:=])(?![=/])[ \t]*+")
_QUOTED_NAME = re.compile(r'"([^"\\\x00\r\n]{1,256}+)"[ \t]*+:[ \t]*+')
# $env:DB_PASSWORD = "..." (PowerShell), a:password="..." (a namespaced attribute)
_PREFIXED_NAME = re.compile(r"(?:\$env|(?<![\w:])(?!xmlns:)[A-Za-z][\w\-]*+):([A-Za-z_][\w.\-]*+)"
                            r"[ \t]*+=(?!=)[ \t]*+")
# A label in emphasis, then its value: **Password**: x, *Password*: x, <b>Password:</b> x
_LABEL = re.compile(r"(?:\*\*?+|<(?:b|strong|em|i|span|label|th|td|dt)(?:\s[^<>]*+)?>)[ \t]*+"
                    r"([A-Za-z][A-Za-z0-9 _.\-]{0,40}?)[ \t]*+:?[ \t]*+"
                    r"(?:\*\*?+|</(?:b|strong|em|i|span|label|th|td|dt)>)[ \t]*+:?[ \t]*+")
# OData and similar filters: Password eq 'x'
_ODATA = re.compile(r"(?<![\w.])([A-Za-z_][\w.]*+)[ \t]++(?:eq|ne)[ \t]++(?=')")
# PHP's serialize(): s:8:"password";s:5:"value";
_PHP_PAIR = re.compile(r's:[0-9]++:"([^"\x00]{1,128}+)";s:[0-9]++:(?=")')
# Passwords given to command-line tools (mysql -pX, docker login -p X, sshpass -p X,
# redis-cli -a X), and .netrc's "login X password Y".
_CLI_PASSWORD = re.compile(
    r"\b(?:mysql|mysqldump|mariadb|sshpass|docker|redis-cli|mongosh?|ldapsearch|ldapmodify"
    r"|ldapadd|ldapdelete|sqlcmd|keytool|jarsigner|az|openssl|htpasswd)\b[^\n\x00]{0,512}?"
    r"[ \t](?:-passin[ \t]++pass:|-passout[ \t]++pass:|--password|-storepass|-keypass"
    r"|-srcstorepass|-deststorepass|-p|-a|-w|-P)(?:[ \t]++|=)?+([\"']?+)([^\s\"'\x00]++)\1")
# --password value, --api-token value: a long option whose name is a secret's, then its value
_LONG_OPTION = re.compile(r"-(?<![^\s\"'\x00]-)-?+([A-Za-z][\w\-]{1,63}+)"
                          r"[ \t]++([\"']?+)([^\s\"'\x00\-][^\s\"'\x00]*+)\2")
_CLI_MORE_TOOLS = ("htpasswd", "smbclient", "rpcclient", "smbmap", "net ", "SecureString",
                   "securestring", "aws ")
_CLI_TOOLS = ("mysql", "mariadb", "sshpass", "docker", "redis-cli", "mongo", "ldap", "sqlcmd",
              "keytool", "jarsigner", "az ", "openssl", "htpasswd")
# More tools' ways: htpasswd -b FILE USER PASS, smbclient -U user%pass, PowerShell's
# ConvertTo-SecureString "pass" -AsPlainText, aws configure set <secret name> VALUE.
_CLI_MORE = re.compile(
    r"\bhtpasswd[ \t]++(?:-[a-zA-Z]*+[ \t]++)*?-[a-zA-Z]*b[a-zA-Z]*+[ \t]++(?:-[a-zA-Z]++[ \t]++)*+"
    r"(?:[^\s\x00-][^\s\x00]*+[ \t]++)?[^\s\x00]++[ \t]++([\"']?+)([^\s\"'\x00]++)\1"
    r"|\b(?:smbclient|rpcclient|smbmap|net)\b[^\n\x00]{0,256}?[ \t](?:-U|--user)[ \t=]++"
    r"[\"']?+[^\s%\x00\"']++%([^\s\x00\"']++)"
    r"|(?i:ConvertTo-SecureString)[ \t]++(?:-String[ \t]++)?([\"'])([^\"'\x00\r\n]++)\4"
    r"|\baws[ \t]++configure[ \t]++set[ \t]++([\w.]*(?:secret|token|password)[\w.]*+)[ \t]++"
    r"([^\s\x00]++)")
# Oracle's connect strings: user/password@host (JDBC thin, sqlplus and its kin)
_ORACLE = re.compile(r"(?:jdbc:oracle:\w++:|\b(?:sqlplus|sqlldr|expdp|impdp|rman|exp|imp)"
                     r"(?:[ \t]++-[A-Za-z]++)*+[ \t]++)[\w$#.\-]++/([^@\s/\x00\"']++)@")
# Netscape's cookie jar (curl -c, browsers' exports): the seventh field is the cookie's value
_COOKIE_JAR = re.compile(r"(?m)^(?:#HttpOnly_)?[^\s#\x00][^\t\r\n\x00]*+\t(?:TRUE|FALSE)\t"
                         r"[^\t\r\n\x00]*+\t(?:TRUE|FALSE)\t-?[0-9]++\t[^\t\r\n\x00]*+\t"
                         r"([^\t\r\n\x00]++)")
# SMTP and IMAP: AUTH PLAIN <base64>, and AUTH LOGIN's answers after "Password:" (base64)
_SMTP_AUTH = re.compile(r"(?i:\bAUTH[ \t]++PLAIN[ \t]++)([A-Za-z0-9+/=]++)"
                        r"|334[ \t]++UGFzc3dvcmQ6[ \t]*+\r?\n(?:C:[ \t]*+)?([A-Za-z0-9+/=]++)")
# A heredoc as a value: password = <<EOT ... EOT (Terraform, shells)
_HEREDOC = re.compile(r"<<[-~]?+[\"']?+([A-Za-z_][A-Za-z0-9_]*+)[\"']?+[ \t]*+\r?\n")
_NETRC = re.compile(r"\blogin[ \t\r\n]++[^\s\x00]++[ \t\r\n]++(?:password|passwd)[ \t]++"
                    r"([^\s\x00]++)")
# INSERT INTO t (a, password) VALUES ('x', 'y'): a value by its column's place.
_SQL_INSERT = re.compile(r"(?i)\binsert[ \t\r\n]++into[ \t\r\n]++[\w.\"`\[\]]++[ \t\r\n]*+"
                         r"\(([^()\x00]{1,2048}+)\)[ \t\r\n]*+values[ \t\r\n]*+\(")
_SQL_VALUE = re.compile(r"'(?:[^'\x00]|'')*+'|[^,()\x00]++")
# A name and its value as the arguments of a call: setItem("token", "..."), ["pin", "1234"].
_CALL_PAIR = re.compile(r"""["']([^"'\\\x00\r\n]{1,128}+)["'][ \t]*+,[ \t]*+(?=["'])""")
_SETTING_NAMES = frozenset(("name", "key", "parametername", "parameterkey", "optionname"))
_SETTING_VALUES = frozenset(("value", "values", "data", "parametervalue"))
_KEY_COLON = re.compile(r"[\"']?+[ \t]*+:[ \t]*+")
# Header lines in text whose whole value is credentials, to the end of the line.
_WHOLE_LINE = frozenset(("cookie", "set-cookie", "authorization", "proxy-authorization"))
_QUOTED = {
    '"': re.compile(r'"((?:[^"\\\x00\r\n]|\\[^\x00])*+)"?'),
    "'": re.compile(r"'((?:[^'\\\x00\r\n]|\\[^\x00])*+)'?"),
}
# A bare value is a word, and the words after it on the line that hold no separator of their
# own ("password: correct horse battery", but "pw=abc user=bob" stops at "user=bob").
_BARE_MAX = 1024
_BARE = re.compile(r"[^\x00\s&\"'<>{}\[\]\\]++"
                   # "&" belongs to the value unless a pair follows it (a query's next pair)
                   r"(?:&(?![^\x00\s&=]*+=)[^\x00\s&\"'<>{}\[\]\\]*+)*+"
                   r"(?:[ \t]++[^\x00\s&\"'<>{}\[\]\\=:|?]++(?![ \t]*+[=:]))*+")
_LINE = re.compile(rf"[^\x00\r\n]{{1,{_BARE_MAX}}}+")
_FALLBACK = re.compile(r"[ \t]*+(?:\|\||\?\?|\bor\b)[ \t]*+")
_YAML_TAG = re.compile(r"[&!][^\s\x00]*+[ \t]++")
_NEXT_LINE = re.compile(r"\r?\n[ \t]++([^\s\x00][^\x00\r\n]{0,1023}+)")
_NEXT_ITEM = re.compile(r"\r?\n[ \t]*+(-[ \t][^\x00\r\n]{0,1023}+)")
_BLOCK = re.compile(r"[|>][+\-0-9]*+[ \t]*+(?=\r?\n)")  # YAML's block scalar indicators
_BRACKETS = re.compile(r'[\[\]{}"\\\x00]')

# --- markup ------------------------------------------------------------------------------

_OPEN_TAG = re.compile(r"<([A-Za-z_][A-Za-z0-9_.:\-]*+)([^<>\x00]*+)(>?)")
_NAMED = re.compile(
    r"""(?i)(?<![\w\-])(?:name|key)[ \t\r\n]*+=[ \t\r\n]*+["']?+([^"'\s<>]*+)""")
_VALUED_TAG = re.compile(
    r"<([A-Za-z][A-Za-z0-9_.:\-]*+)[^<>\x00]*?(?<![A-Za-z0-9_\-])(?:value|content)[ \t]*+="
    r"[^<>\x00]*+>?")
_KEY_ATTRS = ("name", "id", "key", "property", "aria-label", "formcontrolname", "ng-model",
              "v-model", "placeholder", "data-name")
_ATTR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:.\-]*+)[ \t\r\n]*+=[ \t\r\n]*+"
                   r"(?:\"([^\"]*+)\"|'([^']*+)'|([^\s\"'>]++))")
# Elements whose text names the value in the element after them: plist's <key>, XML-RPC's
# <name>, HTML's definition and table headings and labels.
_NAME_ELEMENTS = frozenset(("key", "name", "dt", "th", "td", "label"))
_CONTAINERS = frozenset(("dict", "member", "struct", "entry", "tr", "dl", "div", "p", "span",
                         "b", "strong", "em", "i"))
# HTML elements that have no content (their attributes are read by the tag rule)
_VOID = frozenset(("area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
                   "param", "source", "track", "wbr"))

ALL_FAMILIES = frozenset(("pairs", "markup", "pem", "jwt", "keys", "userinfo", "url", "auth",
                          "email", "card", "base64"))
# Every rule, and a flag: the text has escapes, so it is to be scanned decoded too.
_ESCAPED = ALL_FAMILIES | {"escapes"}
_NONE: frozenset[str] = frozenset()


@functools.lru_cache(maxsize=8192)
def field_class(name: str) -> str:
    """The fingerprint class of a named field's values, wherever the field is."""
    return "field:" + fingerprint_class(name)


# Each digit doubled, its digits summed (Luhn): 5 -> 10 -> 1.
_DOUBLED = str.maketrans("0123456789", "0246813579")


def luhn(digits: str) -> bool:
    """The Luhn check, in C-level steps: every second digit from the right doubled."""
    return (sum(map(int, digits[-1::-2])) + sum(map(int, digits[-2::-2].translate(_DOUBLED)))
            ) % 10 == 0


def is_card(candidate: str) -> bool:
    digits = _SEPARATOR.sub("", candidate)
    return 13 <= len(digits) <= 19 and luhn(digits)


_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_\-.~+=/]++")
_BASE32 = re.compile(r"[A-Z2-7]{24,}+=*+")


def hex_token_in(text: str) -> bool:
    """Whether `text` holds 32 hex digits or more in a row, of one case, with a letter and a
    digit (a session id, an MD5 or SHA). Linear in the text."""
    for pattern in _HEX_RUNS:
        for m in pattern.finditer(text):
            run = m.group()
            if not _DIGITS_ONLY.fullmatch(run) and not _LETTERS_ONLY.fullmatch(run):
                return True
    return False


def is_token(segment: str, changes_at_least: float = 0.3) -> bool:
    """A path segment that reads as a random token: 20 characters or more of a token's
    alphabet, with letters and digits (or both cases) that change class often, unlike words,
    slugs and numbers (`my-article-2024`, `ControllerName`, `20261201`); base32 too. A
    context that already says "token" (an issuer's prefix) asks for fewer changes."""
    if len(segment) < 20 or not _TOKEN_CHARS.fullmatch(segment):
        return False
    if hex_token_in(segment):
        # 32 hex digits or more (a session id, an MD5 or SHA): a token whatever their order.
        # Hex changes class less often than base62, so about 1 in 100 random ones would fall
        # under the threshold below.
        return True
    if _BASE32.fullmatch(segment) and any(c.isdigit() for c in segment):
        return True  # base32 (TOTP seeds, some invite codes): upper case and 2-7
    kinds = [0 if c.isdigit() else 1 if c.islower() else 2 for c in segment if c.isalnum()]
    if len(kinds) < 16:
        return False
    changes = sum(1 for a, b in itertools.pairwise(kinds) if a != b) / len(kinds)
    has = set(kinds)
    if 0 in has and (1 in has or 2 in has):
        return changes >= changes_at_least
    return 1 in has and 2 in has and len(kinds) >= 24 and changes >= changes_at_least * 1.5


_WORD_CHAR = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_HEX_LOWER = frozenset("0123456789abcdef")
_HEX_UPPER = frozenset("0123456789ABCDEF")


class _HexWords:
    """Whether a run of digits lies inside a word that is all hex digits of one case, 32 or
    more with a letter: a digest or an id (`...6c2596281796610cc...` in a SHA-256), whose
    digits are no card however they add up. A card glued to other letters is still one.
    The last word looked at is kept, so a long word with many runs is walked once."""

    def __init__(self, text: str):
        self.text = text
        self.start = self.end = -1
        self.digest = False

    def holds(self, start: int, end: int) -> bool:
        if not self.start <= start < end <= self.end:
            self._word_around(start, end)
        return self.digest

    def _word_around(self, start: int, end: int) -> None:
        text = self.text
        self.digest = False
        self.start, self.end = start, end
        for alphabet in (_HEX_LOWER, _HEX_UPPER):
            if not all(c in alphabet for c in text[start:end]):
                continue
            a, b = start, end
            while a > 0 and text[a - 1] in alphabet:
                a -= 1
            while b < len(text) and text[b] in alphabet:
                b += 1
            self.start, self.end = a, b
            if b - a >= 32 and (a == 0 or text[a - 1] not in _WORD_CHAR) \
                    and (b == len(text) or text[b] not in _WORD_CHAR) \
                    and not _DIGITS_ONLY.fullmatch(text, a, b):
                self.digest = True
                return


def cards_in(run: str) -> list[tuple[int, int]]:
    """The card numbers in a run of digits, as (start, end) in `run`. A run without
    separators is one number (13 to 19 digits); in a run with them a card is whole groups of
    3 to 6 digits (the last may be shorter), 13 to 19 digits in all, starting at any group:
    `4111 1111 1111 1111 12/27` and `id 2222 3333 4111 1111 1111 1111` have one each."""
    if not _SEPARATOR.search(run):
        return [(0, len(run))] if 13 <= len(run) <= 19 and luhn(run) else []
    groups = []  # (start, digits)
    at = 0
    for part in _SEPARATOR.split(run):
        groups.append((at, part))
        at += len(part) + 1
    found = []
    i = 0
    while i < len(groups):
        total, digits, hit = 0, "", None
        for j in range(i, len(groups)):
            group = groups[j][1]
            total += len(group)
            digits += group
            if total > 19 or (len(group) < 3 and j < len(groups) - 1 and total < 13):
                break
            if total >= 13 and luhn(digits):
                hit = j
                break
            if not 3 <= len(group) <= 6:
                break
        if hit is None:
            i += 1
            continue
        start = groups[i][0]
        found.append((start, groups[hit][0] + len(groups[hit][1])))
        i = hit + 1
    return found


class TextScanner:
    """Finds secrets in text; `emails=False` keeps e-mail addresses."""

    def __init__(self, rules: NameRules, *, emails: bool = True) -> None:
        self.rules = rules
        self.emails = emails
        roots = _trie(sorted({w.lower() for w in rules.roots}))
        literals = sorted({w.lower() for w in rules.roots + SHAPE_LITERALS if w})
        # Anything a rule could start from, on lower-cased text (a tag's quick test).
        self._small = re.compile(_trie(literals) + "|" + _ESCAPES)
        self._escapes = re.compile("(?i)" + _ESCAPES)
        # One RE2 pass over a large text tells which rule families can find anything in it;
        # only those then run, each a pass of Python's re.
        families = {
            # A root, then anything up to a separator (looser than the rule: a gate).
            "pairs": rf"(?i)(?:{roots})[^\s=:&;,<>{{}}\[\]]*[\"'\]]{{0,3}}\s*(?::=|=>|[:=,])"
                     rf"|(?:name|key)[\"']?\s*[:=]\s*[\"']?[^\s\"',;]*(?:{roots})"
                     rf"|\"[^\"\n]*(?:{roots})[^\"\n]*\"\s*:"
                     r"|s:[0-9]+:\""  # PHP's serialize()
                     r"|\b(?:mysql|mysqldump|mariadb|sshpass|docker|redis-cli|mongosh?|ldap\w*"
                     r"|sqlcmd|keytool|jarsigner|az|openssl|htpasswd)\b"
                     rf"|\blogin\s+\S+\s+(?:{roots})|(?i:\binsert\s+into\s)"
                     r"|\b(?:htpasswd|smbclient|rpcclient|smbmap|net|aws)\b|(?i:securestring)"
                     r"|jdbc:oracle:|\b(?:sqlplus|sqlldr|expdp|impdp|rman|exp|imp)\b"
                     r"|\t(?:TRUE|FALSE)\t|(?i:auth[ \t]+plain[ \t])|334[ \t]+UGFzc3dvcmQ6"
                     rf"|(?:{roots})[^<>\n]{{0,40}}</(?:b|strong|em|i|span|label|th|td|dt)>"
                     rf"|-(?i:{roots})[\w\-]*[ \t]+[^\s\-]"  # --password value
                     rf"|(?i:{roots})[\w.]*[ \t]+(?:eq|ne)[ \t]+'"  # OData: Password eq '...'
                     r"|kind:[ \t]*[\"']?Secret"  # a Kubernetes Secret in YAML
                     # an object that says its value is a secret (Terraform, GitLab, SSM)
                     r"|(?i:\"(?:sensitive|is_?secret|masked|secure|hidden)\"\s*:\s*true)"
                     r"|(?i:\"type\"\s*:\s*\"(?:securestring|concealed|secret_text)\")",
            "markup": rf"(?i)<[^<>]*(?:{roots})"
                      rf"|<(?:\w+:)?\w*(?:name|key|dt|th|td|label)>[^<]*(?:{roots})",
            "pem": r"----[ \-]?BEGIN |PuTTY-User-Key-File-|MI[IGH][A-Za-z0-9+/]|MC4CAQ|MHcCAQ",
            "jwt": r"e(?:yJ|yA|wo)[A-Za-z0-9_\-]{4,}\.",
            "keys": _KEY_GATE,
            # a prefixed token: a lower-case prefix, a separator, 20 characters or more
            "prefixed": r"[a-z0-9][_\-][A-Za-z0-9_\-]{20}",
            "userinfo": r"://[^\x00\s/?#@<>\"']+@",
            "url": r"://[^\x00\s/?#<>\"']*/[^\x00\s?#<>\"']*[A-Za-z0-9_\-]{20}",
            "auth": r"(?i)(?:bearer|basic)[ \t]+[A-Za-z0-9]|(?:^|\s)(?:-u|--user)[ \t=]+\S+:",
            "email": r"[\w.%+\-]@\w",
            "card": _CARD_GATE,
            # a whole string (between NULs) of base64: a value that may hide one
            # (or a quoted string of mixed case in a text: a JSON value, before parsing)
            "base64": r"(?:^|\x00)[A-Za-z0-9+/_\-]{16,}={0,2}(?:\x00|$)|;base64,"
                      r"|\"[A-Za-z0-9+/_\-]*(?:[a-z][A-Za-z0-9+/_\-]*[A-Z]|[A-Z][A-Za-z0-9+/_\-]*[a-z])"
                      r"[A-Za-z0-9+/_\-]*={0,2}\"",
            "escapes": "(?i)" + _ESCAPES,
        }
        self._family_names = list(families)
        # A larger DFA cache than RE2's default (8 MiB): with every family in one set, the
        # default one fills up and RE2 slows down by about a third (bench/redaction_cost.py).
        options = re2.Options()
        options.max_mem = 32 << 20
        self._set = re2.Set.SearchSet(options)
        for pattern in families.values():
            self._set.Add(pattern.encode())
        self._set.Compile()
        # The binding's own Set.Match, without the wrapper's Python layer (a microsecond a
        # call, and this runs several times per exchange); the wrapper where it has none.
        self._match = getattr(self._set, "_set", self._set).Match

    # --- the quick test --------------------------------------------------------------

    def families(self, text: str, data: bytes | None = None) -> frozenset[str]:
        """The rule families that can find anything in `text` (all of them where escapes
        could hide what they look for). `data`, when given, is `text` as UTF-8."""
        found = self._match(data if data is not None else text.encode(
            "utf-8", "surrogatepass"))
        if not found:
            return _NONE
        names = frozenset(self._family_names[i] for i in found)
        return _ESCAPED if "escapes" in names else names

    def may_hold(self, text: str, data: bytes | None = None) -> bool:
        """False when no rule can find anything in `text`: it is let through as it is."""
        return bool(self._match(data if data is not None else text.encode(
            "utf-8", "surrogatepass")))

    def escapes_in(self, text: str):
        """Where escapes are in `text` (matches of the escape patterns)."""
        return self._escapes.finditer(text)

    # --- all of it ----------------------------------------------------------------------

    def hits(self, text: str, deadline: Deadline | None = None,
             families: frozenset[str] | None = None) -> list[Hit]:
        """Every span of `text` to replace, sorted and not overlapping."""
        if families is None:
            families = self.families(text)
        if not families:
            return []
        found: list[Hit] = []
        if "card" in families:
            pos = 0
            n = 0
            digests = _HexWords(text)
            while (m := _DIGITS.search(text, pos)) is not None:
                n += 1
                if deadline and not n % 64:
                    deadline()
                if not digests.holds(m.start(), m.end()):
                    found += [(m.start() + a, m.start() + b, MARK, "shape:card")
                              for a, b in cards_in(m.group())]
                # A run longer than a piece goes on in the next, which starts far enough back
                # to hold a card cut between the two.
                pos = m.end() - 24 if m.end() - m.start() >= _RUN_PIECE // 2 + 10 else m.end()
        if deadline:
            deadline()
        found += self._shapes(text, families, deadline or _no_deadline)
        if deadline:
            deadline()
        if "pairs" in families:
            found += self._pairs(text, deadline)
        if "markup" in families and "<" in text:
            found += self._markup(text, deadline)
        if deadline:
            if len(found) > MAX_HITS:  # sorting and replacing them would take long too
                raise BudgetExceeded
            deadline()
        return merge(found)

    def _shapes(self, text: str, families: frozenset[str], deadline: Deadline) -> list[Hit]:
        found: list[Hit] = []
        if "pem" in families and "BEGIN" in text:
            covered = 0
            for m in _PEM.finditer(text):
                label = m.group(2)
                if m.start() < covered or ("PRIVATE" not in label and "SECRET" not in label):
                    continue
                dashes = "----" + m.group(1)
                end = text.find(dashes + "END" if m.group(1) else dashes + " END", m.end())
                end = len(text) if end < 0 else _line_end(text, end, dashes)
                found.append((m.start(), end, MARK, "shape:private-key"))
                covered = end
                if end == len(text):  # no END: the rest goes, there is nothing more to find
                    break
        if "pem" in families:
            if "PuTTY-User-Key-File-" in text:
                found += [(m.start(), m.end(), MARK, "shape:private-key")
                          for m in _PUTTY.finditer(text)]
            for m in _checked(_DER_B64.finditer(text), deadline):
                if _private_der(m.group()):
                    found.append((m.start(), m.end(), MARK, "shape:private-key"))
        if "base64" in families and ";base64," in text:
            # a data: URI of text: what the scanner finds in it decoded takes it whole
            for m in _checked(_DATA_URI.finditer(text), deadline):
                try:
                    inner = base64.b64decode(m.group(1)[:_DATA_URI_MAX], validate=False)
                    decoded = inner.decode("utf-8")
                except (binascii.Error, ValueError):
                    continue
                if self.families(decoded) and self.hits(decoded, deadline):
                    found.append((m.start(1), m.end(1), MARK, "shape:data-uri"))
        if "jwt" in families:
            found += [(m.start(), m.end(), FINGERPRINT, "shape:jwt")
                      for m in _checked(_JWT.finditer(text), deadline)]
        if "keys" in families:
            for pattern in _KEYS:
                found += [(m.start(), m.end(), FINGERPRINT, "shape:key")
                          for m in _checked(pattern.finditer(text), deadline)]
        if "prefixed" in families:
            for m in _checked(_PREFIXED_TOKEN.finditer(text), deadline):
                rest = m.group(1)
                if len(rest) >= 20 and (is_token(rest, 0.2) or hex_token_in(rest)) \
                        and not _UUID.search(rest):
                    found.append((m.start(), m.end(), FINGERPRINT, "shape:key"))
        if "url" in families:  # a token in the path of a URL anywhere (a reset link)
            for m in _checked(_URL_IN_TEXT.finditer(text), deadline):
                at = m.start(1)
                for segment in m.group(1).split("/"):
                    if len(segment) >= 20 and is_token(unquote(segment)):
                        found.append((at, at + len(segment), FINGERPRINT, "path"))
                    at += len(segment) + 1
        if "userinfo" in families:
            found += [(m.start(1), m.end(1), MARK, "shape:userinfo")
                      for m in _checked(_USERINFO.finditer(text), deadline)]
        if "auth" in families:
            for m in _checked(_BEARER.finditer(text), deadline):
                found.append((m.start(1), m.end(1), FINGERPRINT, "shape:bearer"))
            for m in _checked(_BASIC.finditer(text), deadline):
                if _is_basic(m.group(1)):
                    found.append((m.start(1), m.end(1), MARK, "shape:basic"))
            for m in _checked(_CURL_USER.finditer(text), deadline):
                found.append((m.start(1), m.end(1), MARK, "shape:userinfo"))
        if self.emails and "email" in families and "@" in text:
            for m in _checked(_EMAIL.finditer(text), deadline):
                domain = m.group(1)
                tld = domain.rpartition(".")[2]
                if not (len(domain) <= 253 and 2 <= len(tld) <= 24 and (
                        tld.isalpha() or tld.startswith("xn--"))) or tld.lower() in _FILE_TYPES:
                    continue
                # The local part, read backwards from the "@" (at most 64 characters).
                local = _LOCAL_PART.match(text[max(0, m.start() - 64):m.start()][::-1])
                if local is not None:
                    found.append((m.start() - local.end(), m.end(), MARK, "shape:email"))
        return found

    def _pairs(self, text: str, deadline: Deadline | None) -> list[Hit]:
        found: list[Hit] = []
        classify = self.rules.classify
        found += self._positional(text, deadline)
        for pattern in (_NAME_SEP, _QUOTED_NAME, _CALL_PAIR, _PHP_PAIR, _PREFIXED_NAME, _LABEL,
                        _ODATA):
            covered = [0]
            named = None  # (action, class, until): a "name: DB_PASSWORD" line just before
            for m in _resuming(pattern, text, covered, deadline):
                name = m.group(1)
                if "%" in name:
                    name = unquote(name)
                lowered = name.lower()
                if lowered in _SETTING_NAMES:
                    # - name: DB_PASSWORD / value: ... (Kubernetes env, key/value lists)
                    span = value_span(text, m.end())
                    setting = text[span[0]:span[1]].strip("'\" ") if span else ""
                    kind = classify(setting) if setting else None
                    named = (kind, field_class(setting), m.end() + 512) if kind else None
                    continue
                if named is not None and lowered in _SETTING_VALUES and m.start() < named[2]:
                    action, cls, _until = named
                    named = None
                    span = value_span(text, m.end())
                    if span is not None:
                        found.append((span[0], span[1], action, cls))
                        covered[0] = span[1]
                    continue
                action = classify(name)
                if action is None and lowered == "code" and _qualified_code(text, m.start()):
                    action = MARK  # "Your verification code: 123456"
                if action is None:
                    # `?code=...` in a URL: OAuth's authorization code, and the like.
                    if not (name.lower() in URL_SECRETS and m.start() and text[m.start() - 1]
                            in "?&#;" and text[m.end() - 1] == "="):
                        continue
                    action = MARK
                if name.lower() in _WHOLE_LINE:
                    line = _LINE.match(text, m.end())
                    span = (m.end(), line.end()) if line else None
                else:
                    span = value_span(text, m.end())
                    if pattern is _CALL_PAIR and span is not None and (
                            colon := _KEY_COLON.match(text, span[1])):
                        # "DB_PASSWORD", "value": "..." is a name, then a member: the value
                        # is the member's
                        span = value_span(text, colon.end())
                if span is None:
                    continue
                start, end = span
                found.append((start, end, action, field_class(name)))
                covered[0] = end  # names inside the value go with it
        return found

    def _positional(self, text: str, deadline: Deadline | None) -> list[Hit]:
        """Secrets told by their place, not a name=value pair: command-line passwords,
        .netrc, SQL INSERT values under a secret column."""
        found: list[Hit] = []
        # Each scan only where its words are: a literal search is a hundred times faster.
        if any(tool in text for tool in _CLI_TOOLS):
            for m in _CLI_PASSWORD.finditer(text):
                found.append((m.start(2), m.end(2), MARK, "field:password"))
        if "login" in text and "pass" in text:
            for m in _NETRC.finditer(text):
                found.append((m.start(1), m.end(1), MARK, "field:password"))
        if any(tool in text for tool in _CLI_MORE_TOOLS):
            for m in _CLI_MORE.finditer(text):
                group = next(g for g in (2, 3, 5, 7) if m.group(g) is not None)
                found.append((m.start(group), m.end(group), MARK, "field:password"))
        if "/" in text and "@" in text and ("oracle" in text or "plus" in text
                                            or "exp" in text or "imp" in text or "rman" in text):
            for m in _ORACLE.finditer(text):
                found.append((m.start(1), m.end(1), MARK, "field:password"))
        if "\tTRUE\t" in text or "\tFALSE\t" in text:
            for m in _COOKIE_JAR.finditer(text):
                found.append((m.start(1), m.end(1), FINGERPRINT, "field:cookie"))
        if "AUTH" in text or "auth" in text or "334" in text:
            for m in _SMTP_AUTH.finditer(text):
                group = 1 if m.group(1) is not None else 2
                found.append((m.start(group), m.end(group), MARK, "field:password"))
        if "-" in text:
            for n, m in enumerate(_LONG_OPTION.finditer(text)):
                if deadline and not n % 256:
                    deadline()
                if action := self.rules.classify(m.group(1)):
                    found.append((m.start(3), m.end(3), action, field_class(m.group(1))))
        sql = _SQL_INSERT.finditer(text) if "INSERT" in text or "insert" in text else ()
        for n, m in enumerate(sql):
            if deadline and not n % 64:
                deadline()
            columns = [c.strip().strip('"`[]') for c in m.group(1).split(",")]
            actions = {i: a for i, c in enumerate(columns) if (a := self.rules.classify(c))}
            if not actions:
                continue
            values = []
            pos = m.end()
            while len(values) < len(columns):
                v = _SQL_VALUE.match(text, pos)
                if v is None:
                    break
                values.append((v.start(), v.end()))
                pos = v.end()
                while pos < len(text) and text[pos] in " \t\r\n":
                    pos += 1
                if pos >= len(text) or text[pos] != ",":
                    break
                pos += 1
                while pos < len(text) and text[pos] in " \t\r\n":
                    pos += 1
            for i, action in actions.items():
                if i < len(values):
                    start, end = values[i]
                    if text[start] == "'":
                        start, end = start + 1, end - 1
                    if end > start:
                        found.append((start, end, action, field_class(columns[i])))
        return found

    def _markup(self, text: str, deadline: Deadline | None) -> list[Hit]:
        """Elements named as secrets, or keyed by a name or key attribute that is one, and
        the element after a <key>/<name> element that names one: their text, to the closing
        tag (or the end of the text). One pass over the tags, resuming after each span."""
        found: list[Hit] = []
        classify = self.rules.classify
        covered = [0]
        value_next = None  # (action, class) for the element after a <key>password</key>
        closings: dict[str, int] = {}
        for m in _resuming(_OPEN_TAG, text, covered, deadline):
            qname, attrs, closed = m.group(1), m.group(2), m.group(3)
            local = qname.rpartition(":")[2]
            lowered = local.lower()
            inner_action = None
            if closed and (lowered in _NAME_ELEMENTS or lowered.endswith(("key", "name"))):
                # <key>password</key>, <ParameterKey>DbPassword</ParameterKey>,
                # <dt>Password</dt>, <td>Password</td>: the element names the one after it
                close = text.find("<", m.end())
                inner = text[m.end(): close if close >= 0 else len(text)].strip()
                if len(inner) <= 128 and (inner_action := classify(inner)) is not None:
                    value_next = (inner_action, field_class(inner))
                    continue
            if value_next is not None and lowered not in _CONTAINERS:
                action, cls = value_next
                value_next = None
                end = self._element_end(text, qname, m.end(), closings)
                if end > m.end() and not attrs.endswith("/"):
                    found.append((m.end(), end, action, cls))
                    covered[0] = end
                continue
            if lowered in _NAME_ELEMENTS:
                continue
            action = classify(local)
            cls = field_class(local)
            if action is None and attrs:
                named = _NAMED.search(attrs)
                if named and (action := classify(named.group(1))):
                    cls = field_class(named.group(1))
            if action is None:
                continue
            if attrs.endswith("/") or not closed or local.lower() in _VOID:
                continue  # no content (its attributes are the pairs' and the tags' rule)
            end = self._element_end(text, qname, m.end(), closings)
            if end > m.end():
                found.append((m.end(), end, action, cls))
                covered[0] = end
        small = self._small
        for n, m in enumerate(_VALUED_TAG.finditer(text)):
            if deadline and not n % 256:
                deadline()
            if small.search(m.group().lower()) is not None:
                found += self._tag_values(m.start(), m.group(), m.group(1))
        return found

    @staticmethod
    def _element_end(text: str, qname: str, at: int, closings: dict[str, int]) -> int:
        """Where the content of an element that opened before `at` ends: its closing tag,
        or, without one, the next tag (or the end of a text cut short); or the NUL that ends
        the string. `closings` keeps where each name's next closing tag is (-1: none), so
        that many elements without one cost one search, not one each."""
        end = closings.get(qname, 0)
        if 0 <= end < at:
            end = closings[qname] = text.find("</" + qname, at)
        if end < 0:
            end = text.find("<", at)
            end = len(text) if end < 0 else end
        nul = text.find("\x00", at, end)
        return nul if nul >= 0 else end

    def _tag_values(self, offset: int, tag: str, element: str) -> list[Hit]:
        """The value/content attributes of a tag whose own name or name/id/key/property
        attribute names a secret, or of an `<input type="password">`."""
        attrs = {}
        for a in _ATTR.finditer(tag):
            group = 2 if a.group(2) is not None else 3 if a.group(3) is not None else 4
            attrs[a.group(1).lower()] = (a.start(group), a.end(group), a.group(group))
        names = [element.rpartition(":")[2]] + [attrs[k][2] for k in _KEY_ATTRS if k in attrs]
        action = name = None
        for name in names:
            if action := self.rules.classify(name):
                break
        if action is None and (
                ("type" in attrs and attrs["type"][2].lower() == "password")
                or ("autocomplete" in attrs and attrs["autocomplete"][2].lower().endswith(
                    ("-password", "one-time-code", "cc-number", "cc-csc")))):
            action, name = MARK, "password"
        if action is None:
            return []
        cls = field_class(name)
        return [(offset + attrs[k][0], offset + attrs[k][1], action, cls)
                for k in ("value", "content") if k in attrs and attrs[k][1] > attrs[k][0]]


_WORD_BEFORE = re.compile(r"([A-Za-z0-9]++)[ \t_\-]++$")


def _qualified_code(text: str, at: int) -> bool:
    """Whether the word before a `code` at `at` makes it a one-time code (login, sms, ...)."""
    before = _WORD_BEFORE.search(text[max(0, at - 32):at])
    return before is not None and before.group(1).lower() in CODE_QUALIFIERS


def _no_deadline() -> None:
    pass


def _checked(matches, deadline: Deadline, every: int = 256):
    """The matches, with the deadline looked at every `every` of them."""
    for n, m in enumerate(matches):
        if not n % every:
            deadline()
        yield m


def _resuming(pattern: re.Pattern, text: str, covered: list[int], deadline: Deadline | None):
    """The matches of `pattern`, each searched for from the end of what is covered so far
    (`covered[0]`, which the caller moves on): a covered stretch is skipped in one step."""
    pos = 0
    n = 0
    while (m := pattern.search(text, max(pos, covered[0]))) is not None:
        n += 1
        if deadline and not n % 256:
            deadline()
        pos = m.end() if m.end() > m.start() else m.start() + 1
        yield m


def value_span(text: str, at: int) -> tuple[int, int] | None:
    """Where the value that starts at `at` ends: a quoted string (to its closing quote, or
    the end of the line when it has none; GraphQL's triple quotes to theirs), a balanced
    {...} or [...], a YAML block (the lines indented under it), or a bare value. None when
    there is no value."""
    if at >= len(text):
        return None
    first = text[at]
    if first in "&!" and (tag := _YAML_TAG.match(text, at)):  # password: &anchor value
        at = tag.end()
        if at >= len(text):
            return None
        first = text[at]
    if first in "\r\n":
        # password:\n  value, and what else is indented under it (a mapping, a list, a
        # list's items at the name's own indentation, as YAML allows)
        nxt = _NEXT_LINE.match(text, at) or _NEXT_ITEM.match(text, at)
        if nxt is None:
            return None
        return nxt.start(1), max(nxt.end(1), _block_end(text, at, at))
    if first in _QUOTED:
        triple = first * 3
        if text.startswith(triple, at):
            end = text.find(triple, at + 3)
            end = _nul_or(text, at + 3, len(text) if end < 0 else end)
            return (at + 3, end) if end > at + 3 else None
        m = _QUOTED[first].match(text, at)
        return (m.start(1), m.end(1)) if m.end(1) > m.start(1) else None
    if first == "\\" and text.startswith(('\\"', "\\'"), at):
        quote = text[at:at + 2]
        end = text.find(quote, at + 2)
        end = _nul_or(text, at + 2, len(text) if end < 0 else end)
        return (at + 2, end) if end > at + 2 else None
    if first in "{[":
        return at, _balanced_end(text, at)
    if first in "|>" and (block := _BLOCK.match(text, at)):
        return at, _block_end(text, at, block.end())
    if first == "<" and (doc := _HEREDOC.match(text, at)):  # password = <<EOT ... EOT
        close = re.compile(rf"^[ \t]*+{doc.group(1)}\b", re.M).search(text, doc.end())
        return doc.end(), _nul_or(text, doc.end(), close.start() if close else len(text))
    m = _BARE.match(text, at, min(len(text), at + _BARE_MAX))
    if m is None:
        return None
    end = m.end()
    # process.env.JWT_SECRET || "fallback": the fallback is a secret too
    if (fallback := _FALLBACK.match(text, end)) and text[fallback.end():fallback.end() + 1] \
            in _QUOTED:
        quoted = _QUOTED[text[fallback.end()]].match(text, fallback.end())
        end = quoted.end()
    return at, end


def _nul_or(text: str, start: int, end: int) -> int:
    nul = text.find("\x00", start, end)
    return nul if nul >= 0 else end


def _block_end(text: str, name_at: int, at: int) -> int:
    """The end of a YAML block value: the lines after `at` indented deeper than the line of
    its name (or blank)."""
    line_start = text.rfind("\n", 0, name_at) + 1
    indent = len(text[line_start:name_at]) - len(text[line_start:name_at].lstrip(" "))
    end = at
    pos = at
    items = None  # whether the block is a list at the name's indentation ("- " lines)
    while pos < len(text) and text[pos] in "\r\n":
        nl = text.find("\n", pos + 1)
        line = text[pos + 1: len(text) if nl < 0 else nl]
        if line.strip():
            depth = len(line) - len(line.lstrip(" "))
            if items is None:
                items = depth == indent and line.lstrip(" ").startswith("- ")
            if depth < indent or (depth == indent and not (
                    items and line.lstrip(" ").startswith("- "))):
                break
        end = len(text) if nl < 0 else nl
        pos = end
        if nl < 0 or "\x00" in line:
            break
    return _nul_or(text, at, end)


def _balanced_end(text: str, at: int) -> int:
    """The end of the bracketed value that starts at `at` (or of the text, or the NUL that
    ends the string it is in), with JSON's strings and escapes respected."""
    depth = 0
    in_string = False
    skip = -1
    for m in _BRACKETS.finditer(text, at):
        pos, ch = m.start(), m.group()
        if ch == "\x00":
            return pos
        if pos == skip:
            continue
        if in_string:
            if ch == "\\":
                skip = pos + 1
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return m.end()
    return len(text)


def _private_der(candidate: str) -> bool:
    """Whether base64 text starts like the DER of a private key or a PKCS#12 file."""
    try:
        head = base64.b64decode(candidate[:16])
    except (binascii.Error, ValueError):
        return False
    if head[0] != 0x30:
        return False
    at = 2 + (head[1] & 0x7F if head[1] & 0x80 else 0)
    return head[at:at + 3] in _PRIVATE_VERSIONS


def _line_end(text: str, at: int, dashes: str = "-----") -> int:
    """The end of the PEM END line that starts at `at`: after its closing dashes."""
    close = text.find(dashes, at + len(dashes) + 3)
    return len(text) if close < 0 else close + len(dashes)


def _is_basic(value: str) -> bool:
    try:
        return b":" in base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False


def merge(hits: list[Hit]) -> list[Hit]:
    """Sorted by start, overlaps folded into the first span (a MARK wins over a fingerprint:
    the stronger treatment)."""
    if len(hits) < 2:
        return hits
    hits.sort()
    out = [hits[0]]
    for hit in hits[1:]:
        last = out[-1]
        if hit[0] < last[1]:
            action = MARK if MARK in (last[2], hit[2]) else last[2]
            out[-1] = (last[0], max(last[1], hit[1]), action, last[3])
        else:
            out.append(hit)
    return out


# --- escapes ---------------------------------------------------------------------------------

# One escape: an HTML character reference, a percent-encoded byte, a JSON \u escape.
_ESCAPE = re.compile(r"&#[xX][0-9a-fA-F]{1,6};?|&#[0-9]{1,7};?|&[A-Za-z][A-Za-z0-9]{1,31};"
                     r"|%[0-9A-Fa-f]{2}|\\u[0-9a-fA-F]{4}|\\u\{[0-9a-fA-F]{1,6}\}"
                     r"|\\x[0-9a-fA-F]{2}")


def _unescape_one(escape: str) -> str:
    if escape[0] == "%":
        return chr(int(escape[1:], 16))  # a byte, read as ISO-8859-1: enough to scan ASCII
    if escape[0] == "\\":  # \uXXXX, \u{X...}, \xXX
        try:
            return chr(int(escape[2:].strip("{}"), 16))
        except (ValueError, OverflowError):
            return escape
    if escape[1] == "#" and not escape.endswith(";"):
        escape += ";"  # &#112 without its semicolon, as browsers read it
    return html.unescape(escape)


def unescaped(text: str) -> tuple[str, list[tuple[int, int]]]:
    """`text` with its escapes undone, and where the two line up: (position in the view,
    position in `text`) at the start and end of every escape, to map a span of the view back
    onto `text` (`raw_span`). Escapes of escapes (`%2561`) come out as escapes (`%61`), which
    the name rule decodes again."""
    parts: list[str] = []
    points: list[tuple[int, int]] = [(0, 0)]
    last = 0
    at = 0  # position in the view
    for m in _ESCAPE.finditer(text):
        plain = text[last:m.start()]
        parts.append(plain)
        at += len(plain)
        points.append((at, m.start()))
        decoded = _unescape_one(m.group())
        parts.append(decoded)
        at += len(decoded)
        points.append((at, m.end()))
        last = m.end()
    parts.append(text[last:])
    return "".join(parts), points


def percent_unescape(text: str) -> str:
    """Percent escapes undone, double and triple encoding too (`p%2561ssword`)."""
    for _ in range(3):
        decoded = unquote(text)
        if decoded == text:
            break
        text = decoded
    return text


def raw_span(points: list[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """The span of the text that a span of its unescaped view covers."""
    views = [p[0] for p in points]

    def raw(position: int, after: bool) -> int:
        i = bisect.bisect_right(views, position) - 1
        if after and i > 0 and views[i] == position and views[i - 1] == position:
            i -= 1  # an escape that decoded to nothing: keep it outside
        view_at, raw_at = points[i]
        return raw_at + (position - view_at)

    return raw(start, False), max(raw(start, False), raw(end, True))


# --- the tail of a cut text --------------------------------------------------------------------

_DELIMITER = re.compile(r"[\s\"'<>,;&=:{}\[\]()]")
_TRAILING_DIGITS = re.compile(r"(?:[0-9]{2,}[ .+\-]){2,}+[0-9]*+\s*+$")
_TAIL_WINDOW = 4096  # no token of a known shape is longer (PEM blocks are cut on their own)


def cut_tail(text: str) -> str:
    """A text cut at the cap without its last, possibly partial, token: whatever follows
    the last delimiter could be the first characters of a secret. Looks at most at the
    last 4 KiB; a window without any delimiter goes as a whole."""
    start = max(0, len(text) - _TAIL_WINDOW)
    end = None
    for m in _DELIMITER.finditer(text, start):
        end = m.end()
    text = text[:end] if end is not None else text[:start]
    # A card number cut after some of its groups: the groups go too.
    digits = _TRAILING_DIGITS.search(text[-64:])
    return text[:len(text) - len(digits.group())] if digits else text
