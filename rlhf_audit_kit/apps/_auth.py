"""The login of ``rlhf-audit serve --basic-auth``: hashed password file, throttled login page.

Password file: one ``user:pbkdf2_sha256$<iterations>$<salt>$<hash>`` line per user (salt and hash
in unpadded base64; blank lines and ``#`` comments ignored), mode 0600 or stricter. Create lines
with ``rlhf-audit serve-passwd FILE USER`` or :func:`hash_password`::

    >>> entry = hash_password("correct horse battery", iterations=MIN_ITERATIONS)
    >>> check_password(entry, "correct horse battery"), check_password(entry, "wrong")
    (True, False)

Plaintext lines are refused. A login compares hashes with :func:`hmac.compare_digest`, runs the
hash off the server's event loop, and a failure is logged (user and client address, never the
password) and blocks further tries of that client and that user for a delay that doubles with
each failure (:class:`Throttle`).
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import math
import os
import re
import secrets
import stat
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import AuditKitError

__all__ = ["hash_password", "check_password", "read_password_file", "set_password", "Throttle",
           "SCHEME", "ITERATIONS", "MIN_ITERATIONS", "MIN_PASSWORD_CHARS"]

log = logging.getLogger("rlhf_audit_kit.serve")

SCHEME = "pbkdf2_sha256"
#: PBKDF2-HMAC-SHA256 iterations of a new entry (OWASP 2023; ~0.3 s per login on the CI machine).
ITERATIONS = 600_000
#: Entries cheaper than this are refused when the file is read.
MIN_ITERATIONS = 100_000
#: Shortest password :func:`hash_password` accepts.
MIN_PASSWORD_CHARS = 12
_USER_RE = re.compile(r"[^\s:#][^\s:]{0,63}")
_HASH_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="rlhf-audit-login")


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii").rstrip("=")


def _unb64(s: str) -> bytes:
    return base64.b64decode(s + "=" * (-len(s) % 4), validate=True)


def hash_password(password: str, *, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    """A password-file entry (without ``user:``) for ``password``; AuditKitError if it is shorter
    than :data:`MIN_PASSWORD_CHARS` or ``iterations`` is below :data:`MIN_ITERATIONS`."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise AuditKitError(f"the password is too short: use at least {MIN_PASSWORD_CHARS} characters")
    if iterations < MIN_ITERATIONS:
        raise AuditKitError(f"iterations must be at least {MIN_ITERATIONS:,}")
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return f"{SCHEME}${iterations}${_b64(salt)}${_b64(digest)}"


def _parse(entry: str) -> tuple[int, bytes, bytes]:
    scheme, iterations, salt, digest = entry.split("$")
    if scheme != SCHEME:
        raise ValueError(scheme)
    return int(iterations), _unb64(salt), _unb64(digest)


def check_password(entry: str, password: str) -> bool:
    """True if ``password`` matches the hashed ``entry`` (constant-time comparison)."""
    iterations, salt, digest = _parse(entry)
    got = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return hmac.compare_digest(got, digest)


def _checked_entry(user: str, entry: str, where: str) -> str:
    """``entry`` if it is a valid hashed entry of a valid user name, else a one-line AuditKitError."""
    if not _USER_RE.fullmatch(user):
        raise AuditKitError(f"{where}: invalid user name (1-64 characters, no spaces, no ':')")
    hint = "create entries with `rlhf-audit serve-passwd FILE USER`"
    if not entry.startswith(SCHEME + "$"):
        raise AuditKitError(f"{where}: the password of {user!r} is not hashed (plaintext is refused); {hint}")
    try:
        iterations, salt, digest = _parse(entry)
    except ValueError:
        raise AuditKitError(f"{where}: malformed {SCHEME} entry for {user!r}; {hint}") from None
    if iterations < MIN_ITERATIONS or len(salt) < 8 or len(digest) != 32:
        raise AuditKitError(f"{where}: the entry of {user!r} is too weak (at least {MIN_ITERATIONS:,} "
                            f"iterations, 8-byte salt, 32-byte hash); {hint}")
    return entry


def checked_users(users: Mapping[str, str], where: str = "basic_auth") -> dict[str, str]:
    """``{user: hashed entry}`` after checking every entry (plaintext passwords are refused)."""
    out = {str(u): _checked_entry(str(u), str(e), where) for u, e in users.items()}
    if not out:
        raise AuditKitError(f"{where}: no users")
    return out


def read_password_file(path: str | os.PathLike) -> dict[str, str]:
    """``{user: entry}`` of a password file; AuditKitError (one line, naming the line) if the file
    is open to group or others, or holds a plaintext, malformed or weak entry.

    >>> import tempfile
    >>> f = Path(tempfile.mkdtemp()) / "users"
    >>> set_password(f, "auditor", "correct horse battery", iterations=MIN_ITERATIONS)
    >>> list(read_password_file(f))
    ['auditor']
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AuditKitError(f"{path}: no such password file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AuditKitError(f"{path}: cannot read the password file ({e.__class__.__name__})") from None
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AuditKitError(f"{path}: open to group or others (mode {stat.S_IMODE(mode):o}); "
                            f"run `chmod 600 {path}`")
    users: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, entry = line.partition(":")
        if not sep:
            raise AuditKitError(f"{path}:{n}: expected 'user:{SCHEME}$...'")
        users[user] = _checked_entry(user, entry, f"{path}:{n}")
    if not users:
        raise AuditKitError(f"{path}: no users; add one with `rlhf-audit serve-passwd {path} USER`")
    return users


def set_password(path: str | os.PathLike, user: str, password: str, *, iterations: int = ITERATIONS) -> None:
    """Add ``user`` to the password file at ``path`` or replace their entry; the file is written
    whole (a temporary file renamed into place) with mode 0600."""
    path = Path(path)
    line = f"{user}:{_checked_entry(user, hash_password(password, iterations=iterations), 'user')}"
    keep = []
    if path.exists():
        read_password_file(path)  # refuse to extend a file that would not be accepted
        keep = [x for x in path.read_text(encoding="utf-8").splitlines()
                if x.strip().partition(":")[0] != user or x.strip().startswith("#")]
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join([*keep, line]) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class Throttle:
    """Exponential back-off after failed logins, per key (a client address, a user name).

    After the n-th failure in a row a key is blocked for ``min(base * 2**(n-1), cap)`` seconds; a
    blocked try is refused without checking the password. A success clears the key. At most
    ``max_keys`` keys are remembered (the oldest are forgotten).

    >>> t = Throttle(base=1.0, cap=8.0, clock=lambda: 0.0)
    >>> [t.failed("ip:1.2.3.4") for _ in range(5)]
    [1.0, 2.0, 4.0, 8.0, 8.0]
    >>> t.wait("ip:1.2.3.4", "user:bob"), t.wait("ip:5.6.7.8")
    (8.0, 0.0)
    """

    def __init__(self, base: float = 1.0, cap: float = 60.0, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 10_000):
        self.base, self.cap, self.clock, self.max_keys = float(base), float(cap), clock, max_keys
        self._state: OrderedDict[str, tuple[int, float]] = OrderedDict()  # key -> (failures, blocked until)

    def wait(self, *keys: str) -> float:
        """Seconds until all of ``keys`` may try again (0 when they may now)."""
        now = self.clock()
        return max([0.0, *(self._state[k][1] - now for k in keys if k in self._state)])

    def failures(self, key: str) -> int:
        return self._state.get(key, (0, 0.0))[0]

    def failed(self, *keys: str) -> float:
        """Record a failure of ``keys``; returns the longest delay now imposed."""
        now, delay = self.clock(), 0.0
        for k in keys:
            n = self.failures(k) + 1
            d = min(self.base * 2 ** (n - 1), self.cap)
            self._state[k] = (n, now + d)
            self._state.move_to_end(k)
            delay = max(delay, d)
        while len(self._state) > self.max_keys:
            self._state.popitem(last=False)
        return delay

    def succeeded(self, *keys: str) -> None:
        for k in keys:
            self._state.pop(k, None)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>RLHF audit | {title}</title>
<style>
body{{font-family:system-ui,sans-serif;background:#f4f6f8;display:flex;justify-content:center;margin-top:12vh}}
form,div.box{{background:#fff;border:1px solid #ddd;border-top:4px solid #1f6f8b;padding:2em;width:320px}}
input,button{{width:100%;padding:10px;margin:6px 0;box-sizing:border-box}}
button{{background:#1f6f8b;color:#fff;border:0}}.errormessage{{color:#b00020;font-weight:600}}
</style></head>
<body>{body}</body></html>
"""
# Self-contained (Panel's own pages load a logo and an icon from its CDN).
LOGIN_PAGE = _PAGE.format(title="Login", body="""<form class="login-form" action="./login" method="post">
<h3>RLHF audit dashboard</h3><p class="errormessage">{{ errormessage|e }}</p>
<input name="username" type="text" autocapitalize="off" autocorrect="off" placeholder="username" autofocus>
<input name="password" type="password" placeholder="password"><button type="submit">Log in</button></form>""")
LOGOUT_PAGE = _PAGE.format(title="Logged out", body="""<div class="box"><h3>Logged out</h3>
<p><a href="{{ LOGIN_ENDPOINT|e }}">Log in again</a></p></div>""")


def login_provider(users: Mapping[str, str], throttle: Throttle | None = None):
    """A Panel/Bokeh auth provider checking ``users`` (hashed entries) with ``throttle``."""
    import jinja2
    from panel.auth import BasicAuthProvider, BasicLoginHandler, LogoutHandler, _validate_next_url
    from panel.io.state import state
    from tornado.escape import url_escape

    users = checked_users(users)
    throttle = throttle or Throttle()
    decoy = hash_password(secrets.token_urlsafe(16))  # an unknown user costs as much as a known one

    class Login(BasicLoginHandler):
        _login_template = jinja2.Template(LOGIN_PAGE)

        async def post(self):
            user = self.get_argument("username", "")[:64]
            password = self.get_argument("password", "")
            client = self.request.remote_ip
            keys = (f"ip:{client}", f"user:{user}")
            wait = throttle.wait(*keys)
            if wait > 0:  # refused before hashing: a blocked client costs the server nothing
                log.warning("login of user %r from %s refused: blocked for %.0f s more after failed logins",
                            user, client, wait)
                return self._fail(f"Too many failed logins: try again in {math.ceil(wait)} s")
            entry = users.get(user, decoy)
            ok = await asyncio.get_running_loop().run_in_executor(_HASH_POOL, check_password, entry, password)
            if ok and user in users:
                throttle.succeeded(*keys)
                log.info("login of user %r from %s", user, client)
                self.set_current_user(user)
                return self.redirect(_validate_next_url(self.get_cookie("next_url", state.base_url)))
            delay = throttle.failed(*keys)
            log.warning("failed login of user %r from %s (%d in a row from there); next try in %.0f s",
                        user, client, throttle.failures(keys[0]), delay)
            self._fail("Invalid username or password")

        def _fail(self, message: str) -> None:
            self.redirect(f"{self._login_endpoint}?error={url_escape(message)}")

    class Logout(LogoutHandler):
        _logout_template = jinja2.Template(LOGOUT_PAGE)

    class Provider(BasicAuthProvider):
        @property
        def login_handler(self):
            Login._login_endpoint = self._login_endpoint
            return Login

        @property
        def logout_handler(self):
            Logout._login_endpoint = self._login_endpoint
            return Logout

    return Provider()
