"""``rlhf-audit serve STORE_OR_BUNDLE``: the dashboard over HTTP.

A folder is served as a snapshot bundle (Parquet, read only); a file as a store opened
**read-only** (DuckDB allows one writing process per file, and a read-only open fails while a
writer holds it: serve a bundle, or stop the writer). Every browser session gets its own
:class:`~rlhf_audit_kit.apps.AuditDashboard`; sessions share one read-only source and its cache.

Bound to anything but a loopback address (127.0.0.1, localhost, ::1) the server refuses to start
without ``--basic-auth FILE`` (lines ``user:password``; Panel's login page and signed cookie)
unless ``--insecure`` is given. Basic auth sends passwords in the clear: put TLS in front of it.
"""
from __future__ import annotations

import argparse
import os
import secrets
import threading
from pathlib import Path
from typing import Any

from ..errors import AuditKitError

__all__ = ["register", "serve", "read_basic_auth", "is_loopback"]

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def is_loopback(address: str) -> bool:
    return address.strip().lower() in LOOPBACK or address.startswith("127.")


def read_basic_auth(path: str | os.PathLike) -> dict[str, str]:
    """Read ``user:password`` lines (blank lines and ``#`` comments ignored) into a dict."""
    users: dict[str, str] = {}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise AuditKitError(f"{path}:{n}: expected 'user:password'")
        users[user] = password
    if not users:
        raise AuditKitError(f"{path}: no 'user:password' lines")
    return users


def _warm_imports() -> None:  # the privacy accountant (dp-accounting) takes seconds to import
    try:
        import rlhf_audit_kit.privacy.accountant  # noqa: F401
        import scipy.stats  # noqa: F401
    except Exception:  # noqa: BLE001 - only a warm-up
        pass


def serve(source: Any, *, port: int = 5006, address: str = "127.0.0.1", basic_auth: dict | str | None = None,
          verifier: Any = None, show: bool = False, threaded: bool = False, warm: bool = False, **kw: Any):
    """Serve the dashboard of ``source`` (path, store or bundle); returns Panel's server (thread).

    Each session builds its own :class:`AuditDashboard` over one shared read-only source.
    ``warm=True`` builds every tab once before serving, so the shared per-source caches (the
    aggregated frames each view plots) are loaded at start-up and no visitor pays for them.
    """
    import panel as pn

    from ._data import as_source
    from .dashboard import AuditDashboard
    src = as_source(source, verifier=verifier)

    def app():
        pn.extension("tabulator")
        return AuditDashboard(src, verifier=verifier).template()

    if warm:
        _warm_dashboard(src, verifier)
    else:
        threading.Thread(target=_warm_imports, daemon=True).start()
    host = "localhost" if is_loopback(address) else address
    origins = [f"{host}:{port}", f"127.0.0.1:{port}", f"localhost:{port}"]
    if basic_auth is not None and not os.environ.get("PANEL_COOKIE_SECRET"):
        kw.setdefault("cookie_secret", secrets.token_urlsafe(32))
    return pn.serve({"/": app}, port=port, address=address, show=show, threaded=threaded,
                    websocket_origin=kw.pop("websocket_origin", origins), basic_auth=basic_auth,
                    title=f"RLHF audit: {src.label}", liveness=True, verbose=False, **kw)


def _warm_dashboard(src: Any, verifier: Any) -> None:
    """Render every tab once, off-screen, to fill the source's caches before the first visitor."""
    import panel as pn

    from .dashboard import AuditDashboard
    try:
        d = AuditDashboard(src, verifier=verifier)
        pn.panel(d).get_root()
        for i in range(1, 4):
            d.active = i
    except Exception as e:  # noqa: BLE001 - a failed warm-up only costs the first visitor time
        print(f"warning: dashboard warm-up failed ({e}); serving anyway", flush=True)


def _cmd_serve(args) -> int:
    address = args.address
    if not is_loopback(address) and not args.basic_auth and not args.insecure:
        raise AuditKitError(f"refusing to serve on {address} without --basic-auth FILE "
                            f"(or --insecure to serve the record to anyone who can reach it)")
    auth = read_basic_auth(args.basic_auth) if args.basic_auth else None
    path = Path(args.source)
    if not path.exists():
        raise FileNotFoundError(f"no store or bundle at {path}")
    host = "localhost" if is_loopback(address) else address
    kind = "bundle" if path.is_dir() else "store (read-only)"
    print(f"serving {kind} {path} at http://{host}:{args.port}/"
          + (" (basic auth)" if auth else ""), flush=True)
    serve(path, port=args.port, address=address, basic_auth=auth, verifier=args.verifier, show=False, warm=True)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    s = subparsers.add_parser("serve", help="serve the audit dashboard of a store or bundle",
                              description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("source", metavar="STORE_OR_BUNDLE", help="a store file (opened read-only) or a bundle folder")
    s.add_argument("--port", type=int, default=5006)
    s.add_argument("--address", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.add_argument("--basic-auth", metavar="FILE", help="file of 'user:password' lines; enables a login page")
    s.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback address without --basic-auth")
    s.add_argument("--verifier", metavar="VKEY", default=None,
                   help="verifier key string, .vkey file or keys folder to trust (default: the bundle's key)")
    s.set_defaults(func=_cmd_serve)
