"""Which names are secrets': by the words they are made of, look-alikes kept."""

import itertools

import pytest

from capture.redact.names import FINGERPRINT, MARK, ROOTS, NameRules, fingerprint_class, words

RULES = NameRules()

MARKED = [
    "password", "Password", "PASSWORD", "userPassword", "new_password", "old-password",
    "passwd", "pwd", "PassPhrase", "passcode", "pass", "pw", "db_pass", "userpass", "pin",
    "pin_code", "pincode", "otp", "totp_code", "mfa", "2fa_code", "verification_code",
    "sms-code", "twoFactorCode", "cvv", "cvv2", "cvc", "ssn", "secret",
    "client_secret", "X-Api-Secret", "SECRET_KEY", "secretKey", "credential", "credentials",
    "Passwort", "mot_de_passe", "auth_code", "securitycode", "verificationcode", "smsotp",
    "cardpin", "code_verifier",
]
FINGERPRINTED = [
    "token", "access_token", "accessToken", "refresh-token", "id_token", "X-Auth-Token",
    "Private-Token", "X-Amz-Security-Token", "authenticity_token", "csrfmiddlewaretoken",
    "__RequestVerificationToken", "_token", "api_key", "apiKey", "APIKey", "APIKEY", "api-key",
    "x-api-key", "X-Goog-Api-Key", "key", "keys", "AccessKeyId", "accesskey", "signingKey",
    "passkey", "Ocp-Apim-Subscription-Key", "authorization", "Authorization",
    "Proxy-Authorization", "authentication", "oauth_token", "xauth", "session", "session_id",
    "sessionId", "JSESSIONID", "PHPSESSID", "connect.sid", "sid", "sess", "cookie", "Cookie",
    "Set-Cookie", "X-CSRF-Token", "X-XSRF-TOKEN", "csrf", "signature", "X-Amz-Signature",
    "X-Hub-Signature-256", "sig", "bearer", "jwt", "X-Goog-Iap-Jwt-Assertion",
    "client_assertion", "X-Shopify-Hmac-Sha256", "hmac", "primaryKey", "primaryMasterKey",
    "secondaryKey", "input_token", "provider_token", "X-Provider-Token", "awskey", "sign",
    "req_sign", "SAMLResponse",
]
KEPT = [
    # look-alikes: a short root inside a longer word
    "monkey", "keyboard", "passenger", "author", "authors", "authored_at", "authority",
    "compass", "bypass", "passport", "sidebar", "inside", "design", "signal", "signup",
    "spinner", "pinned", "opinion", "shipping", "hotkey", "turkey", "hockey", "keynote",
    "tokenizer", "secretary", "lesson", "hotpot", "considered", "president", "codec",
    # known-safe: a count, a type, a URL, a public key next to the root word
    "max_tokens", "prompt_tokens", "completion_tokens", "token_type", "token_endpoint",
    "public_key", "Public-Key-Pins", "sort_key", "cache_key", "sign_in", "sign_up_url",
    "Idempotency-Key", "client_assertion_type", "session_timeout", "key_name",
    "www-authenticate", "Access-Control-Allow-Credentials",
    # no root at all
    "user", "name", "email", "id", "page", "Content-Type", "Host", "User-Agent", "zip_code",
    "status_code", "country_code", "error_code", "code", "Keep-Alive", "state", "nonce",
    "client_id",
]


@pytest.mark.parametrize("name", MARKED)
def test_guessable_secrets_are_marked(name):
    assert RULES.classify(name) == MARK


@pytest.mark.parametrize("name", FINGERPRINTED)
def test_tokens_keys_sessions_are_fingerprinted(name):
    assert RULES.classify(name) == FINGERPRINT


@pytest.mark.parametrize("name", KEPT)
def test_look_alikes_and_safe_names_are_kept(name):
    assert RULES.classify(name) is None


def test_words_split_case_separators_and_acronyms():
    assert words("X-Amz-Security-Token") == ["x", "amz", "security", "token"]
    assert words("APIKeyID") == ["api", "key", "id"]
    assert words("userPassword2") == ["user", "password", "2"]
    assert words("connect.sid") == ["connect", "sid"]


def test_every_redacted_name_holds_a_root():
    # The scanners skip text without any root: a rule that fired without one would be missed
    # in text. Every name of the lists above and every pair of their words is tried.
    parts = [w for name in MARKED + FINGERPRINTED + KEPT for w in words(name)]
    names = MARKED + FINGERPRINTED + KEPT + [a + sep + b for a, b in itertools.product(
        parts[:60], parts[:60]) for sep in ("_", "")]
    for name in names:
        if RULES.classify(name) is not None:
            assert any(root in name.lower() for root in ROOTS), name


def test_deployment_names_add_and_keep():
    rules = NameRules(extra_mark=["membership_no"], extra_fingerprint=["X-Tenant"],
                      safe=["api_key"])
    assert rules.classify("membership_no") == MARK
    assert rules.classify("x-tenant-id") == FINGERPRINT
    assert rules.classify("api_key") is None
    assert rules.classify("apiKey") is None  # the same words
    assert rules.may_hold("the membership_no field")


def test_long_names_are_judged_without_filling_the_cache():
    name = "a" * 5000 + "_password"
    assert RULES.classify(name) == MARK
    assert RULES._cached.cache_info().currsize < 8192


def test_fingerprint_class_is_the_words_run_together():
    assert fingerprint_class("api_key") == fingerprint_class("apiKey") == \
        fingerprint_class("Api-Key") == "apikey"


@pytest.mark.parametrize("name", [
    "password_policy", "password_min_length", "pin_length", "otp_type", "passcode_required",
    "pass_through", "X-Pass-Through", "boarding_pass", "cookie_banner_text", "authorized_key",
    "oauth_provider", "authentication_flow",
])
def test_names_about_a_secret_are_not_its_name(name):
    assert RULES.classify(name) is None


@pytest.mark.parametrize("name", ["password_hint", "db_pass", "user_pass", "primaryKey",
                                  "secondaryKey", "password_reset"])
def test_and_their_neighbours_still_are(name):
    assert RULES.classify(name) is not None
