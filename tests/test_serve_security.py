"""The served dashboard's guards: loopback check, hashed password file, throttled login, routes that
need the login, the fixed liveness answer, and the Python serve() refusing a public bind."""
from __future__ import annotations

import hmac
import http.cookiejar
import io
import os
import stat
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

pn = pytest.importorskip("panel")

from rlhf_audit_kit.apps import _auth  # noqa: E402
from rlhf_audit_kit.apps.serve import InsecureServeError, is_loopback, read_basic_auth, serve  # noqa: E402
from rlhf_audit_kit.errors import AuditKitError  # noqa: E402

from factories import annotation  # noqa: E402
from browser.served import served_dashboards  # noqa: E402

PASSWORD = "correct horse battery"
FAST = _auth.MIN_ITERATIONS  # the cheapest entry accepted keeps the tests fast


@pytest.mark.parametrize("address, loopback", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True),
    (" LOCALHOST ", True), ("0.0.0.0", False), ("::", False), ("", False), (None, False),
    ("127.0.0.1.example.invalid", False), ("127.evil.example", False), ("localhost.example", False),
    ("192.168.1.10", False), ("10.0.0.1", False), ("::ffff:10.0.0.1", False)])
def test_is_loopback(address, loopback):
    assert is_loopback(address) is loopback


# ---------------------------------------------------------------------------- password file
def _password_file(path, *lines, mode=0o600):
    path.write_text("".join(f"{x}\n" for x in lines))
    os.chmod(path, mode)
    return path


def test_hashed_file_accepted(tmp_path):
    f = tmp_path / "users"
    _auth.set_password(f, "auditor", PASSWORD, iterations=FAST)
    _auth.set_password(f, "second", PASSWORD + "!", iterations=FAST)
    _auth.set_password(f, "auditor", "a new correct password", iterations=FAST)  # replaces the entry
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    users = read_basic_auth(f)
    assert sorted(users) == ["auditor", "second"]
    assert _auth.check_password(users["auditor"], "a new correct password")
    assert not _auth.check_password(users["auditor"], PASSWORD)
    assert PASSWORD not in f.read_text()
    scheme, iterations, salt, digest = users["auditor"].split("$")
    assert (scheme, int(iterations)) == ("pbkdf2_sha256", FAST)
    assert int(_auth.hash_password(PASSWORD).split("$")[1]) == _auth.ITERATIONS >= 600_000


@pytest.mark.parametrize("lines, mode, message", [
    (["auditor:correct horse battery"], 0o600, "is not hashed (plaintext is refused); create entries with "
                                               "`rlhf-audit serve-passwd FILE USER`"),
    (["# nobody"], 0o600, "no users"),
    (["justaname"], 0o600, "expected 'user:pbkdf2_sha256$...'"),
    (["auditor:pbkdf2_sha256$600000$not-base64!$x"], 0o600, "malformed pbkdf2_sha256 entry"),
    (["auditor:pbkdf2_sha256$1000$c2FsdHNhbHQ$" + "A" * 43], 0o600, "too weak"),
    (["bad user:pbkdf2_sha256$600000$c2FsdHNhbHQ$" + "A" * 43], 0o600, "invalid user name"),
])
def test_bad_files_refused_with_one_line(tmp_path, lines, mode, message):
    f = _password_file(tmp_path / "users", *lines, mode=mode)
    with pytest.raises(AuditKitError) as e:
        read_basic_auth(f)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_group_or_world_readable_file_refused(tmp_path, mode):
    f = tmp_path / "users"
    _auth.set_password(f, "auditor", PASSWORD, iterations=FAST)
    os.chmod(f, mode)
    with pytest.raises(AuditKitError, match=f"open to group or others \\(mode {mode:o}\\); run `chmod 600"):
        read_basic_auth(f)


def test_short_password_refused(tmp_path):
    for short in ("a", "x" * (_auth.MIN_PASSWORD_CHARS - 1)):
        with pytest.raises(AuditKitError, match=f"at least {_auth.MIN_PASSWORD_CHARS} characters"):
            _auth.set_password(tmp_path / "users", "auditor", short, iterations=FAST)
    assert not (tmp_path / "users").exists()


def test_password_check_is_constant_time(monkeypatch):
    entry = _auth.hash_password(PASSWORD, iterations=FAST)
    seen, real = [], hmac.compare_digest

    def spy(a, b):  # records and calls the real comparison
        seen.append((a, b))
        return real(a, b)
    monkeypatch.setattr(_auth.hmac, "compare_digest", spy)
    assert _auth.check_password(entry, PASSWORD) and not _auth.check_password(entry, PASSWORD + "x")
    assert len(seen) == 2 and all(isinstance(a, bytes) and len(a) == len(b) == 32 for a, b in seen)


def test_throttle_doubles_per_client_and_user_and_clears_on_success():
    now = [100.0]
    t = _auth.Throttle(base=1.0, cap=8.0, clock=lambda: now[0], max_keys=3)
    keys = ("ip:10.0.0.1", "user:bob")
    assert t.wait(*keys) == 0
    assert [t.failed(*keys) for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert t.wait("ip:10.0.0.1") == t.wait("user:bob") == 8.0  # either key blocks
    assert t.wait("ip:10.0.0.2", "user:bob") == 8.0 and t.wait("ip:10.0.0.2", "user:alice") == 0
    now[0] += 8.0
    assert t.wait(*keys) == 0 and t.failures("user:bob") == 5  # may try again; the count stays
    assert t.failed(*keys) == 8.0
    t.succeeded(*keys)
    assert t.wait(*keys) == 0 and t.failures("user:bob") == 0
    for i in range(5):  # memory stays bounded
        t.failed(f"ip:10.0.1.{i}")
    assert len(t._state) == 3


# ---------------------------------------------------------------------------- a served app
class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **k):
        return None


class Client:
    """HTTP client of one served app, with its own cookies; redirects are returned, not followed."""

    def __init__(self, base: str):
        self.base = base
        self.opener = urllib.request.build_opener(_NoRedirect, urllib.request.HTTPCookieProcessor(
            http.cookiejar.CookieJar()))

    def get(self, path: str, data: dict | None = None) -> tuple[int, str, bytes]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        try:
            r = self.opener.open(self.base + path, data=body, timeout=60)
            return r.status, "", r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Location") or "", b""

    def login(self, user: str, password: str) -> str:
        code, where, _ = self.get("/login", {"username": user, "password": password})
        assert code == 302, code
        return where


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    """A small read-only store and a password file (mode 600)."""
    from rlhf_audit_kit.store import open_store
    folder = tmp_path_factory.mktemp("served")
    with open_store(folder / "audit.duckdb", pseudonymize=False) as s:
        s.extend([annotation(i) for i in range(12)])
    _auth.set_password(folder / "users", "auditor", PASSWORD, iterations=FAST)
    return folder


@pytest.fixture
def served():
    with served_dashboards() as start:
        yield lambda source, **kw: Client(start(source, **kw))


def _unloaded_module() -> str:
    return next(m for m in ("tabnanny", "mailbox", "imaplib", "poplib", "nturl2path") if m not in sys.modules)


def test_unauthenticated_routes(record, served, monkeypatch):
    from rlhf_audit_kit.apps.dashboard import AuditDashboard
    built = []
    real_init = AuditDashboard.__init__

    def counting_init(self, *a, **k):  # counts dashboards built, then builds the real one
        built.append(1)
        real_init(self, *a, **k)
    monkeypatch.setattr(AuditDashboard, "__init__", counting_init)
    client = served(record / "audit.duckdb", basic_auth=record / "users")

    # liveness: one fixed, cheap answer whatever the query; no dashboard is built
    t0 = time.perf_counter()
    for q in ("", "?endpoint=/", "?endpoint=/nope"):
        for _ in range(5):
            assert client.get("/liveness" + q) == (200, "", b'{"/liveness": true}')
    assert time.perf_counter() - t0 < 2.0 and built == []

    # every other route needs the login: the page redirects to it, the rest answer 403
    for path in ("/", "/?x=1"):
        code, where, _ = client.get(path)
        assert code == 302 and where.startswith("/login?next="), (path, code, where)
    module = _unloaded_module()
    for path in (f"/components/{module}/X/_css/x.css", "/components/panel/template/fast/list/FastListTemplate/"
                 "_css/fast.css", "/static/js/bokeh.min.js", "/static/extensions/panel/panel.min.js", "/metadata",
                 "/favicon.ico", "/autoload.js?bokeh-autoload-element=x", "/ws"):
        assert client.get(path)[0] == 403, path
    assert module not in sys.modules and built == []
    assert client.get("/login")[0] == 200 and b"https:" not in client.get("/login")[2]

    # logged in, the files are served (the dashboard itself: tests/browser); unloaded modules are
    # still never imported
    assert client.login("auditor", PASSWORD) == "/"
    assert client.get("/static/js/bokeh.min.js")[0] == 200
    assert client.get(f"/components/{module}/X/_css/x.css")[0] == 404 and module not in sys.modules
    assert built == []


def test_failed_logins_are_logged_and_slowed_down(record, served, caplog):
    caplog.set_level("INFO", logger="rlhf_audit_kit.serve")
    client = served(record / "audit.duckdb", basic_auth=record / "users")
    assert "error=Invalid" in client.login("auditor", "wrong password")
    # blocked for a second: even the right password is refused (before it is hashed)
    assert "error=Too+many+failed+logins" in client.login("auditor", PASSWORD)
    assert "error=Too+many+failed+logins" in client.login("someone-else", PASSWORD)  # same client
    failed = [r.getMessage() for r in caplog.records if r.name == "rlhf_audit_kit.serve"]
    assert any("failed login of user 'auditor' from 127.0.0.1" in m for m in failed), failed
    assert sum("refused: blocked" in m for m in failed) == 2
    assert not any(PASSWORD in m or "wrong password" in m for m in failed)
    time.sleep(1.05)
    assert client.login("auditor", PASSWORD) == "/"
    assert client.get("/liveness")[0] == 200


def test_python_serve_refuses_a_public_bind_without_login(record):
    for address in ("0.0.0.0", "::", "192.0.2.1", "127.0.0.1.example.invalid", None):
        with pytest.raises(InsecureServeError, match="without a login"):
            serve(record / "audit.duckdb", address=address)
    with pytest.raises(AuditKitError, match="plaintext is refused"):
        serve(record / "audit.duckdb", basic_auth={"auditor": PASSWORD})
    assert issubclass(InsecureServeError, AuditKitError)


def _cli(capsys, monkeypatch, *args, stdin: str = "") -> tuple[int, str, str]:
    from rlhf_audit_kit.cli import main
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))  # not a terminal: one line is read
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_serve_passwd_and_refusals(tmp_path, record, capsys, monkeypatch):
    f = tmp_path / "users"
    code, out, _ = _cli(capsys, monkeypatch, "serve-passwd", f, "auditor", stdin=PASSWORD + "\n")
    assert code == 0 and "password of 'auditor' set" in out
    assert stat.S_IMODE(f.stat().st_mode) == 0o600 and _auth.check_password(read_basic_auth(f)["auditor"], PASSWORD)
    plain = _password_file(tmp_path / "plain", "auditor:" + PASSWORD)
    for args, stdin, message in [
        (("serve-passwd", f, "bob"), "short\n", "at least 12 characters"),
        (("serve", record / "audit.duckdb", "--address", "0.0.0.0"), "", "refusing to serve on 0.0.0.0"),
        (("serve", record / "audit.duckdb", "--basic-auth", plain), "", "plaintext is refused"),
        (("serve", record / "audit.duckdb", "--basic-auth", tmp_path / "missing"), "", "no such password file"),
    ]:
        code, _, err = _cli(capsys, monkeypatch, *args, stdin=stdin)
        assert code == 1 and message in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    os.chmod(f, 0o644)
    code, _, err = _cli(capsys, monkeypatch, "serve", record / "audit.duckdb", "--basic-auth", f)
    assert code == 1 and "chmod 600" in err and len(err.strip().splitlines()) == 1
