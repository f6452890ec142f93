"""``rlhf-audit serve STORE_OR_BUNDLE``: the dashboard over HTTP.

A folder is served as a snapshot bundle (Parquet, read only) and **followed**: about once a second
one watcher looks at its ``manifest.json``; a new checkpoint that verifies against the last one
shown (signature, consistency, the new segments) is shown in every open session within seconds,
without a reload, and one that does not is shown as a failure in red while the last good view
stays. A file is served as a store opened **read-only** (DuckDB allows one writing process per
file, and a read-only open fails while a writer holds it: publish a bundle, or stop the writer).
Every browser session gets its own :class:`~rlhf_audit_kit.apps.AuditDashboard`; sessions share one
read-only source and its cache.

Pin the key you trust with ``--vkey`` (a key string or file) or ``--keys DIR``. Without one the
record's own key is used (a bundle's ``verifier.vkey``, kept from start-up on) and every page says
in red that nothing was pinned. ``--witness VKEY`` (repeatable) names the pinned witnesses that
cosigned the checkpoint shown; then a new checkpoint is shown only once ``--witness-quorum N``
(default: all) of them have cosigned it.

Bound to anything but a loopback address (127.0.0.0/8, ::1, localhost) the server refuses to
start without ``--basic-auth FILE`` unless ``--insecure`` is given. FILE holds hashed
``user:pbkdf2_sha256$...`` lines (make them with ``rlhf-audit serve-passwd FILE USER``; the
file must not be readable by group or others). With a login, every route but ``/login``,
``/logout`` and ``/liveness`` (a fixed answer) needs it; failed logins are logged and slowed
down. Basic auth sends passwords in the clear: put TLS in front of it.
"""
from __future__ import annotations

import argparse
import functools
import getpass
import inspect
import ipaddress
import os
import secrets
import sys
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import AuditKitError
from ._auth import checked_users, hash_password, read_password_file, set_password

__all__ = ["register", "serve", "read_basic_auth", "is_loopback", "InsecureServeError", "hash_password",
           "set_password"]

PUBLIC_ROUTES = ("/login", "/logout", "/liveness")


class InsecureServeError(AuditKitError):
    """Refused to serve the record on a non-loopback address without a login (``insecure=False``)."""


def is_loopback(address: str | None) -> bool:
    """True for ``localhost`` and loopback IP addresses (127.0.0.0/8, ``::1``, ``[::1]``).

    >>> [is_loopback(a) for a in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "127.0.0.1.example.invalid")]
    [True, True, True, False, False]
    """
    if address is None:  # Bokeh binds every interface
        return False
    a = address.strip().lower()
    if a == "localhost":
        return True
    if a.startswith("[") and a.endswith("]"):
        a = a[1:-1]
    try:
        return ipaddress.ip_address(a).is_loopback
    except ValueError:
        return False


def read_basic_auth(path: str | os.PathLike) -> dict[str, str]:
    """The ``{user: hashed entry}`` of a password file (see :mod:`rlhf_audit_kit.apps._auth`)."""
    return read_password_file(path)


def _users(basic_auth: Any) -> dict[str, str] | None:
    if basic_auth is None:
        return None
    if isinstance(basic_auth, Mapping):
        return checked_users(basic_auth)
    if isinstance(basic_auth, (str, os.PathLike)):
        return read_password_file(basic_auth)
    raise AuditKitError("basic_auth must be a password file or a {user: hashed entry} mapping")


def _warm_imports() -> None:  # the privacy accountant (dp-accounting) takes seconds to import
    try:
        import rlhf_audit_kit.privacy.accountant  # noqa: F401
        import scipy.stats  # noqa: F401
    except Exception:  # noqa: BLE001 - only a warm-up
        pass


def serve(source: Any, *, port: int = 5006, address: str = "127.0.0.1", basic_auth: Any = None,
          insecure: bool = False, verifier: Any = None, show: bool = False, threaded: bool = False,
          warm: bool = False, follow: bool | None = None, witnesses: Any = None,
          witness_quorum: int | None = None, poll_interval: float = 1.0, **kw: Any):
    """Serve the dashboard of ``source`` (path, store or bundle); returns Panel's server (thread).

    ``basic_auth``: a password file or ``{user: hashed entry}`` (see ``rlhf-audit serve-passwd``);
    required on a non-loopback ``address`` unless ``insecure=True`` (else InsecureServeError).
    Each session builds its own :class:`AuditDashboard` over one shared read-only source.
    ``warm=True`` builds every tab once before serving, so the shared per-source caches (the
    aggregated frames each view plots) are loaded at start-up and no visitor pays for them.
    ``follow`` (default: True for a bundle folder path): watch the folder every ``poll_interval``
    seconds and show each new checkpoint that verifies (:class:`~rlhf_audit_kit.apps._live.LiveSource`).
    ``verifier``: the key you trust (without it the page says in red that nothing was pinned);
    ``witnesses``/``witness_quorum``: witness keys whose cosignatures are named and required.

    >>> serve("bundle/", address="0.0.0.0")   # doctest: +SKIP
    Traceback (most recent call last):
    InsecureServeError: refusing to serve on 0.0.0.0 without a login ...
    """
    if not is_loopback(address) and basic_auth is None and not insecure:
        raise InsecureServeError(f"refusing to serve on {address} without a login: give basic_auth "
                                 f"(--basic-auth FILE), or insecure=True (--insecure) to serve the record "
                                 f"to anyone who can reach it")
    users = _users(basic_auth)
    import panel as pn

    from ._auth import login_provider
    from ._data import as_source
    from ._live import LiveSource
    from .dashboard import AuditDashboard
    if follow is None:
        from ..bundle import is_bundle
        follow = isinstance(source, (str, os.PathLike)) and Path(source).is_dir() and is_bundle(source)
    if follow:
        if not (isinstance(source, (str, os.PathLike)) and Path(source).is_dir()):
            raise AuditKitError("follow=True needs a bundle folder (a path) to watch")
        src = live = LiveSource(source, verifier=verifier, witnesses=witnesses, witness_quorum=witness_quorum,
                                interval=poll_interval)
        live.poll()  # the first checkpoint is verified before the first visitor
        if live.state.failure is not None:
            print(f"warning: {live.state.failure.message}; the page shows this in red, and no data until a "
                  f"checkpoint verifies", file=sys.stderr, flush=True)
    else:
        live = None
        src = as_source(source, verifier=verifier)
        src.vkey()  # a --verifier that is not a key fails now, not in a visitor's session

    def app():
        pn.extension("tabulator")
        return AuditDashboard(src, verifier=None if live else verifier, witnesses=witnesses,
                              witness_quorum=witness_quorum).template()

    if warm:
        _warm_dashboard(src, verifier, witnesses, witness_quorum)
    else:
        threading.Thread(target=_warm_imports, daemon=True).start()
    host = "localhost" if is_loopback(address) else address
    kw.setdefault("websocket_origin", [f"{host}:{port}", f"127.0.0.1:{port}", f"localhost:{port}"])
    kw["extra_patterns"] = [(r"/liveness", _liveness_handler()), *kw.get("extra_patterns", [])]
    if users is not None:
        kw["auth_provider"] = login_provider(users)
        if not os.environ.get("PANEL_COOKIE_SECRET"):
            kw.setdefault("cookie_secret", secrets.token_urlsafe(32))
    kw.update(port=port, address=address, show=show, title="RLHF audit", liveness=False, verbose=False)
    if live is not None:
        kw["live"] = live
    if not threaded:
        return _run({"/": app}, login=users is not None, **kw)
    from panel.io.state import state
    from panel.io.threads import StoppableThread
    from tornado.ioloop import IOLoop
    loop, sid = IOLoop(make_current=False), uuid.uuid4().hex
    thread = StoppableThread(target=_run, io_loop=loop, args=({"/": app},), owns_loop=True,
                             kwargs=dict(kw, login=users is not None, loop=loop, server_id=sid))
    state._threads[sid] = thread  # as pn.serve(threaded=True) does: thread.stop() finds its server
    thread.start()
    return thread


def _run(apps: dict, *, login: bool, start: bool = True, live: Any = None, **kw: Any):
    """Panel's server with our route guard applied before it answers any request, and the live
    source's watcher on its loop (one per server, stopped with it)."""
    from panel.io.server import get_server
    server = get_server(apps, start=False, **kw)
    _guard_routes(server._tornado, login)
    if live is not None:
        server.io_loop.add_callback(live.start)
    if start:
        server.start()
        try:
            server.io_loop.start()
        except RuntimeError:  # the loop is already running (e.g. under Jupyter)
            pass
    return server


def _guard_routes(app: Any, login: bool) -> None:
    """Make every route but :data:`PUBLIC_ROUTES` require the login cookie, and stop Panel's
    ``/components/<module>/...`` route from importing modules that are not loaded yet."""
    from bokeh.server.views.doc_handler import DocHandler
    from bokeh.server.views.root_handler import RootHandler
    from panel.io.server import ComponentResourceHandler
    from tornado.web import RequestHandler
    for rule in app.wildcard_router.rules:
        target = rule.target
        if not (isinstance(target, type) and issubclass(target, RequestHandler)):
            continue
        pattern = getattr(rule.matcher, "regex", None)
        if pattern is not None and pattern.pattern.rstrip("$") in PUBLIC_ROUTES:
            continue
        bases = (_LoadedModulesOnly,) if issubclass(target, ComponentResourceHandler) else ()
        if login:
            bases += (_PageLoginRequired if issubclass(target, (DocHandler, RootHandler)) else _LoginRequired,)
        if bases:
            rule.target = type(target.__name__, (*bases, target), {})


class _LoginRequired:
    """Mixin: refuse (403) a request without the signed login cookie."""

    def _refuse(self):
        from tornado.web import HTTPError
        raise HTTPError(403)

    async def prepare(self):
        from panel.config import config
        if not self.get_secure_cookie("user", max_age_days=config.oauth_expiry):
            return self._refuse()
        result = super().prepare()
        if inspect.isawaitable(result):
            await result


class _PageLoginRequired(_LoginRequired):
    """The dashboard page: a visitor without the cookie is sent to the login, and back after it
    (only the page sets where to return: a refused icon or script must not)."""

    def _refuse(self):
        from tornado.httputil import url_concat
        if self.request.method not in ("GET", "HEAD"):
            return super()._refuse()
        self.redirect(url_concat(self.application.auth_provider.login_url, {"next": self.request.uri}))


class _LoadedModulesOnly:
    """Mixin for Panel's component resource route: serve resources of loaded modules only."""

    def parse_url_path(self, path: str) -> str:
        from tornado.web import HTTPError
        if path.split("/", 1)[0] not in sys.modules:
            raise HTTPError(404, "Module not found")
        return super().parse_url_path(path)


@functools.cache
def _liveness_handler():  # tornado comes with panel: imported only when serving
    from tornado.web import RequestHandler

    class Liveness(RequestHandler):
        """A fixed answer: the process is up (it builds nothing, whatever the query)."""

        def get(self):
            self.set_header("Content-Type", "application/json")
            self.write({"/liveness": True})
    return Liveness


def _warm_dashboard(src: Any, verifier: Any, witnesses: Any = None, witness_quorum: int | None = None) -> None:
    """Render every tab once, off-screen, to fill the source's caches before the first visitor."""
    import panel as pn

    from ._live import LiveSource
    from .dashboard import AuditDashboard
    if isinstance(src, LiveSource) and src.state.source is None:
        return
    try:
        d = AuditDashboard(src, verifier=None if isinstance(src, LiveSource) else verifier, witnesses=witnesses,
                           witness_quorum=witness_quorum)
        pn.panel(d).get_root()
        for i in range(1, 4):
            d.active = i
    except Exception as e:  # noqa: BLE001 - a failed warm-up only costs the first visitor time
        print(f"warning: dashboard warm-up failed ({e}); serving anyway", flush=True)


def _cmd_serve(args) -> int:
    address = args.address
    if not is_loopback(address) and not args.basic_auth and not args.insecure:
        raise InsecureServeError(f"refusing to serve on {address} without --basic-auth FILE "
                                 f"(or --insecure to serve the record to anyone who can reach it)")
    auth = read_password_file(args.basic_auth) if args.basic_auth else None
    from ..bundle_files import is_url, shown_url
    remote = is_url(args.source)  # a bundle on object storage: served as it is now (not followed)
    path = args.source if remote else Path(args.source)
    if not remote and not path.exists():
        raise FileNotFoundError(f"no store or bundle at {path}")
    if args.verifier is not None and args.keys is not None:
        raise AuditKitError("pass either --vkey (--verifier) or --keys, not both")
    verifier = args.verifier if args.verifier is not None else args.keys
    if args.witness_quorum is not None and not args.witness:
        raise AuditKitError("--witness-quorum needs the witness keys: pass --witness VKEY (repeatable)")
    host = "localhost" if is_loopback(address) else address
    follow = not remote and path.is_dir() and not args.no_follow
    kind = ("bundle (following new checkpoints)" if follow else "bundle" if remote or path.is_dir()
            else "store (read-only)")
    print(f"serving {kind} {shown_url(path) if remote else path} at http://{host}:{args.port}/"
          + (" (login required)" if auth else ""), flush=True)
    if verifier is None:
        print("warning: no verifier key pinned (--vkey or --keys): signatures are checked against the record's "
              "own key, and the page says so in red", file=sys.stderr, flush=True)
    serve(path, port=args.port, address=address, basic_auth=auth, insecure=args.insecure,
          verifier=verifier, show=False, warm=True, follow=follow, witnesses=args.witness or None,
          witness_quorum=args.witness_quorum, poll_interval=args.poll)
    return 0


def _read_new_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise AuditKitError("the two passwords differ; nothing written")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def _cmd_passwd(args) -> int:
    set_password(args.file, args.user, _read_new_password())
    print(f"{args.file}: password of {args.user!r} set (mode 600)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    s = subparsers.add_parser("serve", help="serve the audit dashboard of a store or bundle",
                              description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("source", metavar="STORE_OR_BUNDLE", help="a store file (opened read-only), or a snapshot bundle: a folder or an fsspec URL")
    s.add_argument("--port", type=int, default=5006, help="port to listen on")
    s.add_argument("--address", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.add_argument("--basic-auth", metavar="FILE",
                   help="password file of hashed 'user:pbkdf2_sha256$...' lines (see serve-passwd); "
                        "enables a login page")
    s.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback address without --basic-auth")
    s.add_argument("--vkey", "--verifier", dest="verifier", metavar="VKEY", default=None,
                   help="verifier key you trust: a key string or .vkey file (without it or --keys, the record's "
                        "own key is used and the page says in red that nothing was pinned)")
    s.add_argument("--keys", metavar="DIR", default=None, help="keys folder holding the verifier key to pin")
    s.add_argument("--witness", metavar="VKEY", action="append", default=None,
                   help="witness key (string, file or witness keys folder) whose cosignatures are named "
                        "(repeatable)")
    s.add_argument("--witness-quorum", metavar="N", type=int, default=None,
                   help="show a new checkpoint only once N of the --witness keys cosigned it (default: all)")
    s.add_argument("--no-follow", action="store_true",
                   help="serve a bundle folder as it is now, without watching it for new checkpoints")
    s.add_argument("--poll", metavar="SECONDS", type=float, default=1.0,
                   help="seconds between two looks at a followed bundle folder (default 1)")
    s.set_defaults(func=_cmd_serve)
    p = subparsers.add_parser(
        "serve-passwd", help="add a user to a password file for serve --basic-auth (or change their password)",
        description="Hash a password (PBKDF2-HMAC-SHA256, 600,000 iterations) into FILE as a "
                    "'USER:pbkdf2_sha256$...' line; the file is created or rewritten with mode 600. "
                    "The password is asked twice on a terminal, else read as one line from stdin. "
                    "At least 12 characters.")
    p.add_argument("file", metavar="FILE", help="password file (created if missing)")
    p.add_argument("user", metavar="USER", help="user name (no spaces, no ':')")
    p.set_defaults(func=_cmd_passwd)
