"""Secrets in free text: shapes, name/value pairs, markup, and the tail of a cut text."""

import random
import string

import pytest

from capture.redact import Policy, Redactor
from capture.redact.names import FINGERPRINT, MARK, NameRules
from capture.redact.text import TextScanner, cut_tail, is_card, luhn, merge

SCANNER = TextScanner(NameRules())
# The budget is wall-clock time, and these tests are not about it (its own test sets it): a
# loaded machine must not turn a scan into "over the redaction budget".
R = Redactor(b"test-key", Policy(budget_ms=60_000.0))
JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N"
PEM = ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6\n"
       "-----END RSA PRIVATE KEY-----")


def found(text: str) -> list[str]:
    return [text[s:e] for s, e, _a, _c in SCANNER.hits(text)]


@pytest.mark.parametrize(("secret", "kind"), [
    (JWT, "shape:jwt"),
    ("AKIAIOSFODNN7EXAMPLE", "shape:key"),
    ("ghp_16C7e42F292c6912E7710c838347Ae178B4a", "shape:key"),
    ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123", "shape:key"),
    ("glpat-abcdefghij0123456789", "shape:key"),
    ("xoxb-17653672481-19874698323-pdFZKVeTuE8sk7oOcBrzbqgy", "shape:key"),
    ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", "shape:key"),
    ("AIzaSyA1234567890abcdefghijklmnopqrstu", "shape:key"),
    ("ya29.a0AfH6SMBx1234567890abcdefghij", "shape:key"),
    ("sk-proj-abcdefghijklmnopqrstuvwxyz012345", "shape:key"),
    ("SG.abcdefghijklmnopqrstuv.abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", "shape:key"),
    ("npm_abcdefghijklmnopqrstuvwxyz0123456789", "shape:key"),
    ("hf_abcdefghijklmnopqrstuvwxyz01234567", "shape:key"),
    ("hvs.CAESIJlWh1b9abcdefghijklmnop", "shape:key"),
    ("bob.smith+tag@mail.example.co.uk", "shape:email"),
    ("4111 1111 1111 1111", "shape:card"),
    ("5500-0000-0000-0004", "shape:card"),
    ("378282246310005", "shape:card"),
])
def test_values_by_shape_wherever_they_are(secret, kind):
    text = f"before [{secret}] after"
    hits = SCANNER.hits(text)
    assert [(text[s:e], c) for s, e, _a, c in hits] == [(secret, kind)]


def test_pem_private_keys_go_whole_and_to_the_end_when_cut():
    assert found(f"key:\n{PEM}\nrest") == [PEM]
    cut = PEM[:60]
    assert found(f"x {cut}") == [cut]
    assert found("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----") == []


def test_bearer_basic_and_user_information():
    assert found("auth was Bearer abc.def-ghi_jkl now") == ["abc.def-ghi_jkl"]
    assert found("Basic dXNlcjpodW50ZXIy") == ["dXNlcjpodW50ZXIy"]  # user:hunter2
    assert found("Basic information about it") == []  # not base64 of user:password
    assert found("postgres://app:s3cret@db:5432/x") == ["app:s3cret"]


def test_numbers_that_are_not_cards_stay():
    assert found("order 4111111111111112 id 1795000000000 and 12345678901234567890") == []
    assert luhn("79927398713") and not luhn("79927398710")
    assert is_card("4111-1111-1111-1111") and not is_card("4111")


@pytest.mark.parametrize(("text", "secret"), [
    ("password=hunter2", "hunter2"),
    ("user=bob&token=t0k3n&x=1", "t0k3n"),
    ('{"user": "bob", "password": "hunter2"}', "hunter2"),
    ("password: correct horse battery", "correct horse battery"),
    ("api_key = 'sq1'", "sq1"),
    ("$cfg['db_pass'] => 'pw2'", "pw2"),
    ("login(username: \"bob\", password: \"gql\")", "gql"),
    ('{\\"secret\\":\\"escaped\\"}', "escaped"),
    ("user[password]=nested", "nested"),
    ("p%61ssword=percent", "percent"),
    ("https://x.test/cb#access_token=frag&state=1", "frag"),
    ("X-Amz-Signature=abcdef0123&X-Amz-Date=1", "abcdef0123"),
    ("pin: 1234", "1234"),
    ('"credentials": {"user": "u", "v": [1, "in"]}', '{"user": "u", "v": [1, "in"]}'),
])
def test_name_value_pairs(text, secret):
    assert secret in found(text), found(text)


def test_a_bare_value_does_not_hide_the_next_pair():
    text = 'password=one two and token: "three"'
    assert found(text) == ["one two and", "three"]


def test_code_is_a_secret_in_urls_only():
    assert found("https://app.test/cb?state=s&code=c0de") == ["c0de"]
    assert found("Error code: 414") == [] and found('{"code": 404}') == []


def test_look_alike_names_keep_their_values():
    text = "monkey=1&keyboard=qwerty&passenger=4&author=me&compass=n&sidebar=left"
    assert found(text) == []


@pytest.mark.parametrize(("text", "secret"), [
    ("<soap:Header><wsse:Password Type='t'>xmlpw</wsse:Password></soap:Header>", "xmlpw"),
    ("<token>abc</token><user>bob</user>", "abc"),
    ("<credentials><user>bob</user><x>y</x></credentials>", "<user>bob</user><x>y</x>"),
    ('<input type="hidden" name="csrf_token" value="csrfv">', "csrfv"),
    ('<input type="password" name="p" value="typed">', "typed"),
    ('<meta name="csrf-token" content="metav">', "metav"),
    ('<add key="ApiKey" value="cfgv"/>', "cfgv"),
    ('<user password="attr"/>', "attr"),
    ("<password>no end", "no end"),
])
def test_markup(text, secret):
    assert secret in found(text), found(text)


def test_markup_with_safe_names_stays():
    assert found('<input name="username" value="bob"><author>me</author>') == []


def test_quick_test_lets_plain_text_through_and_catches_escapes():
    assert not SCANNER.may_hold("alpha beta gamma " * 100)
    assert not SCANNER.may_hold("alpha beta gamma")
    for text in ("a passphrase: x", "password\n  =\n x", '"password"\n : 1', "x \\u0070",
                 "&#112;", "%61", "eyJhbGciOi.x", "x@y.z", "4111 1111 1111 1111",
                 "<p name=csrf>", "Bearer abc", "-----BEGIN X", "ghp_x"):
        assert SCANNER.may_hold(text) and SCANNER.may_hold(text + " " * 1000), text
    assert not SCANNER.may_hold("a passphrase is long " * 100)  # a root, but no pair


def test_spans_never_cross_a_nul():
    text = "password=abc\x00next string"
    assert found(text) == ["abc"]
    assert found('password: "open\x00more"') == ["open"]


def test_merge_folds_overlaps_and_mark_wins():
    assert merge([(5, 9, FINGERPRINT, "a"), (0, 6, MARK, "b")]) == [(0, 9, MARK, "b")]
    assert merge([(0, 2, MARK, "a"), (3, 4, MARK, "b")]) == [(0, 2, MARK, "a"),
                                                           (3, 4, MARK, "b")]


@pytest.mark.parametrize(("text", "kept"), [
    ("a=1&password=hunt", "a=1&password="),
    ("tokens: eyJhbGciOiJIUz", "tokens: "),
    ("ends with a space ", "ends with a space "),
    ("x" * 10_000, "x" * (10_000 - 4096)),
])
def test_cut_tail_drops_what_could_be_a_secrets_start(text, kept):
    assert cut_tail(text) == kept


def test_digits_inside_a_digest_are_no_card():
    # A SHA-256 seen in a test run: its 13 digits 2596281796610 pass the Luhn check.
    digest = "d6275e88cc6dd88f262f0d636c2596281796610cc3e2f7f758689d5fdc549a77"
    assert is_card("2596281796610")
    for text in (digest, f"40000 {digest}", f'{{"sha256": "{digest.upper()}"}}'):
        assert found(text) == []
    # The same digits glued to a short word, a word with other letters, or a digest of
    # mixed case are still a card.
    assert found("ref2596281796610") == ["2596281796610"]
    assert found(f"x{digest}") == ["2596281796610"]
    assert found(digest[:26] + "2596281796610" + "Q" * 30) == ["2596281796610"]


def test_no_digest_in_random_hex_loses_digits_to_the_card_rule():
    rng = random.Random(15)
    for _ in range(3000):
        digest = f"{rng.getrandbits(256):064x}"
        assert found(f"sum {digest}\n") == []


@pytest.mark.parametrize("before", [0, 10, 47, 48, 49, 60])
def test_a_card_in_a_long_run_of_digit_groups_is_found_wherever_it_is(before):
    text = " ".join(["2222"] * before + ["4111 1111 1111 1111"] + ["3333"] * 60)
    assert found(text) == ["4111 1111 1111 1111"]


@pytest.mark.parametrize(("text", "secret"), [
    ("env:\n- name: DB_PASSWORD\n  value: kpw1\n- name: REGION\n  value: eu\n", "kpw1"),
    ("password: &anchor ypw2\n", "ypw2"),
    ("password:\n  ypw3\nnext: 1\n", "ypw3"),
    ("secret = '''tpw4'''", "tpw4"),
    ('query = """ mutation { login(password: "gpw5") } """', "gpw5"),
    ("<member><name>password</name><value><string>xpw6</string></value></member>", "xpw6"),
    ("<dict><key>password</key><string>ppw7</string></dict>", "ppw7"),
    ("<dl><dt>Username</dt><dd>admin</dd><dt>Password</dt><dd>hpw8</dd></dl>", "hpw8"),
    ('<Setting Name="DbPassword">spw9</Setting>', "spw9"),
    ("<member><ParameterKey>DbPassword</ParameterKey><ParameterValue>cpw10</ParameterValue>",
     "cpw10"),
    ("+ mysql -h db -u root -pmpw11 -e 'select 1'", "mpw11"),
    ("docker login -u ci -p dpw12 registry.example.com", "dpw12"),
    ("sshpass -p 'spw13' ssh deploy@host", "spw13"),
    ("machine api.example.com\n  login bot\n  password npw14\n", "npw14"),
    ("INSERT INTO users (email, password) VALUES ('a@x.org', 'qpw15');", "qpw15"),
    ('a:2:{s:8:"username";s:5:"alice";s:8:"password";s:6:"ppw16x";}', "ppw16x"),
    ('{"user"=>"a", :api_secret => "rpw17"}', "rpw17"),
    ('const jwtSecret = process.env.JWT_SECRET || "jpw18";', "jpw18"),
    ('"DB_PASSWORD", "value": "cpw19"', "cpw19"),
    ("--password=fpw20 --user=bob", "fpw20"),
    ("PASSWORD            = apw21", "apw21"),
])
def test_names_in_more_syntaxes(text, secret):
    assert secret not in R.scrub(text), R.scrub(text)


@pytest.mark.parametrize("secret", [
    "https://hooks.slack.com/services/T0ABC1234/B0ABC1234/abcdefghijklmnopqrstuvwx",
    "https://discord.com/api/webhooks/123456789012345678/abcDEF-ghiJKL_mnoPQR0123456789",
    "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw7",
    "GOCSPX-abcdefghijklmnopqrstuvwx12",
    "key-0123456789abcdef0123456789abcdef",
    "SK0123456789abcdef0123456789abcdef",
    "sk.eyJ1IjoibWFwYm94IiwiYSI6ImNrMTIzNDU2In0.abcdefghijkl",
    "EAAAEnvZK2XhRkE0i2h0xGBkFyNNQVBDTYqKlq_lH3yFWlJuoCZVt5r8ZjU0pJ4B",
    "HRKU-0123456789abcdef0123456789abcdef",
    "base64url.bearer.authorization.k8s.io.ZXlKaGJHY2lPaUpTVXpJMU5pSjk",
])
def test_more_token_shapes(secret):
    assert secret not in R.scrub(f"value {secret} loaded")


def test_tokens_in_the_paths_of_urls_anywhere():
    text = "<p>Reset it: https://app.test/reset/8f14e45fceea167a5a36dedd4bea2543 now</p>"
    assert "8f14e45f" not in R.scrub(text) and "https://app.test/reset/" in R.scrub(text)


@pytest.mark.parametrize(("text", "kept"), [
    ("<saml2:Issuer>https://idp.example.com</saml2:Issuer>", "<saml2:Issuer>"),
    ("xmlns:saml2='urn:oasis:names:tc:SAML:2.0:assertion'", "urn:oasis:names:tc:SAML:2.0"),
    ("logo@2x.png and app@1.2.3.tgz", "logo@2x.png and app@1.2.3.tgz"),
    ('<meta name="csrf-token" content="abc"><p>All the rest of the page</p>',
     "<p>All the rest of the page</p>"),
    ("mkdir -p /tmp/build", "mkdir -p /tmp/build"),
])
def test_what_looks_close_but_is_no_secret_stays(text, kept):
    assert kept in R.scrub(text)


def test_escaped_text_keeps_its_escapes_where_nothing_was_hidden():
    text = '<div data-props="{&quot;csrfToken&quot;:&quot;esc1&quot;}">&lt;script&gt;</div>'
    out = R.scrub(text)
    assert "esc1" not in out and "&lt;script&gt;" in out and "&quot;csrfToken&quot;" in out
    assert "alice" not in R.scrub("email=alice%40example.com&x=1")


def test_upper_case_bearer_and_idn_domains():
    assert "abcdefghijkl" not in R.scrub("BEARER abcdefghijkl")
    assert "bob" not in R.scrub("write to bob@example.xn--p1ai")


@pytest.mark.parametrize(("text", "secret"), [
    ("openssl pkcs12 -export -passout pass:opw1 -in a.pem", "opw1"),
    ("keytool -list -storepass kpw2 -keystore ks.jks", "kpw2"),
    ("app --db-password lpw3 --verbose", "lpw3"),
    ("$env:DB_PASSWORD='epw4'", "epw4"),
    ('<add key="db:password" value="npw5"/>', "npw5"),
    ("**Password**: mpw6", "mpw6"),
    ("<b>Password:</b> bpw7<br>", "bpw7"),
    ("<tr><td>Password</td><td>tpw8</td></tr>", "tpw8"),
    ('<input aria-label="Password" value="apw9">', "apw9"),
    ('<input formcontrolname="password" value="fpw10">', "fpw10"),
    ('<input autocomplete="current-password" name="p" value="cpw11">', "cpw11"),
    ('<input autocomplete="one-time-code" name="c" value="493817">', "493817"),
    ("password\\x3dxpw12", "xpw12"),
    ("password\\u{3d}upw13", "upw13"),
    ("password&#61hpw14 next", "hpw14"),
    ("GET /reset/password=ppw15 HTTP/1.1", "ppw15"),
    ("Your verification code: 572913", "572913"),
    ("$filter=Password eq 'opw16'", "opw16"),
])
def test_tools_labels_markup_and_escapes(text, secret):
    assert secret not in R.scrub(text), R.scrub(text)


@pytest.mark.parametrize("text", [
    "</password>", "<p>code: 200</p>", "$filter=status eq 'active'", "xmlns:password='urn:x'",
])
def test_their_look_alikes_stay(text):
    assert R.scrub(text) == text


@pytest.mark.parametrize("name", [
    "пароль", "Пароль", "lösenord", "passord", "salasana", "heslo", "şifre", "jelszó", "lozinka",
    "密码", "パスワード", "비밀번호", "סיסמה", "mật_khẩu", "kata_sandi", "clave",
])
def test_password_in_other_languages_and_scripts(name):
    assert "lpw1" not in R.scrub(f"{name}: lpw1"), R.scrub(f"{name}: lpw1")
    assert "lpw2" not in R.scrub(f'{{"{name}": "lpw2"}}')


def test_issuer_prefixed_tokens_of_any_issuer():
    # A prefix of letters, a separator, a random part: whatever issuer's, not a word's.
    rng = random.Random(13)
    alphabet = string.ascii_letters + string.digits
    for prefix in ("dckr_pat_", "sbp_", "gsk_", "r8_", "xai-", "ntn_", "zz_", "acme-"):
        token = prefix + "".join(rng.choice(alphabet) for _ in range(32))
        assert token[-16:] not in R.scrub(f"value {token} loaded"), token
    for kept in ("order-123e4567-e89b-12d3-a456-426614174000", "x86_64-linux-gnu-gcc-12",
                 "created_at_2026_12_01_timestamp", "get_UserProfileSettingsPageHandler"):
        assert R.scrub(kept) == kept
