"""Hostile strings in every field of every event kind stay text in an exported compliance notebook.

A real store gets events whose every string field (and map key, JSON value, the origin, the signing
key's name, the bundle's and the notebook's folder names) holds HTML, Markdown, MathJax or
attribute-breaking payloads. The notebook is exported with ``include_texts=True``, executed by a
real kernel, rendered by nbconvert, and opened in headless Chromium with every request routed:
no script runs (``window.__pwned`` stays undefined), no request leaves the page, no element gets an
event-handler attribute or a link/source, and the payloads are shown, escaped, as text.
"""
from __future__ import annotations

import ast
import datetime as dt
import os

import nbformat
import numpy as np
import pytest

from rlhf_audit_kit.ledger.checkpoint import Signer
from rlhf_audit_kit.report import export_compliance_notebook
from rlhf_audit_kit.schema import KINDS
from rlhf_audit_kit.store import open_store

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
        "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage"]

PAYLOADS = (
    '<img src=x onerror="window.__pwned=1">',
    "<script>window.__pwned=1</script>",
    "![x](http://127.0.0.2:9/leak)",
    "[link](javascript:window.__pwned=1)",
    "`code` </code></td></tr></table><img src=x onerror=window.__pwned=1>",
    "x\" onmouseover=\"window.__pwned=1\" y='",
    "<svg onload=window.__pwned=1>",
    "$\\href{javascript:window.__pwned=1}{x}$ $$x$$",
    "<http://127.0.0.2:9/auto> www.127.0.0.2.example http://127.0.0.2:9/bare",
    '<iframe src="javascript:window.__pwned=1"></iframe>',
    "&lt;b&gt; | pipe | **bold** _it_ \\`",
    "# heading\n- item\n1. one\n<style>*{display:none}</style>",
)
# No whitespace and no '+' (a valid key name), still markup and attribute-breaking.
KEY_NAME = "\"'><img/src=x/onerror=window.__pwned=1>"
ORIGIN = "<img src=x onerror=\"window.__pwned=1\"> ' \\ ``` </code> ![x](http://127.0.0.2:9/leak) $x$"
BUNDLE_DIR = 'bundle <img src=x onerror="window.__pwned=1"> \'"'
REPORT_DIR = "report <svg onload=window.__pwned=1>"
# Fields the notebook shows (with include_texts): their row-0 value must be visible, as text.
SHOWN = (("dataset", "name"), ("dataset", "version"), ("dataset", "license"), ("dataset", "source"),
         ("oversight", "reason"), ("oversight", "role"), ("oversight", "subject_run"),
         ("oversight", "subject_checkpoint"), ("train_step", "run_id"), ("train_step", "algorithm"),
         ("checkpoint", "base_model"), ("checkpoint", "parent"), ("checkpoint", "run_id"),
         ("annotation", "guideline_version"), ("annotation", "dataset"), ("annotation", "prompt"),
         ("annotation", "response_a"), ("annotation", "response_b"), ("rating", "dataset"),
         ("privacy_budget", "description"))
CHOICE_VALUES = {"choice": "ab", "gold_choice": "a", "decision": "approve"}


def hostile(kind: str, field: str, row: int) -> str:
    """A payload tagged with where it was put, so each one can be found; the shown fields cycle
    through all payloads (each one is displayed), the others get one by their name."""
    n = SHOWN.index((kind, field)) + row if (kind, field) in SHOWN else sum(map(ord, f"{kind}.{field}"))
    return f"{PAYLOADS[n % len(PAYLOADS)]} ~{kind}.{field}.{row}"


def hostile_row(kind, row: int, t0: dt.datetime) -> dict:
    """An event of ``kind`` with every string field, map key and JSON value hostile."""
    out: dict = {"kind": kind.name}
    for f in kind.fields:
        v = hostile(kind.name, f.name, row)
        if f.choices:
            c = CHOICE_VALUES.get(f.name, f.choices[0])
            out[f.name] = c[row % len(c)] if f.name == "choice" else c
        elif f.type in ("id", "text"):
            out[f.name] = v
        elif f.type == "int":
            out[f.name] = {"scale_min": 1, "scale_max": 5}.get(f.name, row + 1)
        elif f.type == "float":
            out[f.name] = 0.25 + row
        elif f.type == "ts":
            out[f.name] = t0 + dt.timedelta(minutes=row, seconds=1 if f.name == "submitted_at" else 0)
        elif f.type == "bool":
            out[f.name] = True
        elif f.type == "map_float":
            out[f.name] = {v: 1.0 + row, "objective/kl": 0.1 * row}
        elif f.type == "map_int":
            out[f.name] = {v: 3}
        elif f.type == "json":
            out[f.name] = {v: v, "nested": [v]}
    if kind.name == "checkpoint":
        out["content_hash"] = "sha256:" + f"{row:02x}" * 32
    if kind.name == "custom":
        out["name"] = "eval_x:javascript:window"  # a kind name: letters, digits, _ . : -
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A hostile store, signed by a hostile key name, bundled and exported into hostile folders."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    tmp = tmp_path_factory.mktemp("hostile")
    signer = Signer(KEY_NAME, Ed25519PrivateKey.generate())
    t0 = dt.datetime(2026, 1, 1, 12, 0)
    with open_store(tmp / "audit.duckdb", pseudonymize=False, origin=ORIGIN) as store:
        rows = [hostile_row(k, i, t0) for k in KINDS.values() if not k.internal for i in range(3)]
        store.extend(rows)
        scope = "dataset:" + PAYLOADS[1]
        store.privacy.set_budget(scope, 3.0, description=hostile("privacy_budget", "description", 0))
        store.privacy.release("annotator_count", epsilon=0.5, scopes=[scope], rng=np.random.default_rng(0))
        bundle = store.snapshot(signer).export(tmp / BUNDLE_DIR)
    nb_path = export_compliance_notebook(bundle, tmp / REPORT_DIR / "evidence.ipynb", verifier=signer.vkey,
                                         include_texts=True)
    bundle.close()
    return {"tmp": tmp, "notebook": nb_path, "html": nb_path.with_suffix(".html"), "signer": signer,
            "rows": rows}


def test_every_string_field_of_every_kind_is_hostile(exported):
    """The fixture covers what the test claims: all user kinds, all their string fields."""
    rows = exported["rows"]
    for kind in (k for k in KINDS.values() if not k.internal):
        row = next(r for r in rows if r["kind"] == kind.name)
        for f in kind.fields:
            if f.type in ("id", "text") and not f.choices and (kind.name, f.name) not in (
                    ("checkpoint", "content_hash"), ("custom", "name")):  # validated formats
                assert any(p in row[f.name] for p in PAYLOADS), (kind.name, f.name)


def test_executed_without_errors(exported):
    nb = nbformat.read(exported["notebook"], as_version=4)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors[:1]
    assert "Appendix: sample of annotated texts" in exported["notebook"].read_text(encoding="utf-8")


@pytest.mark.browser
def test_html_runs_no_script_sends_no_request_and_shows_the_payloads(exported, browser_type):
    if not os.path.exists(CHROMIUM):  # pragma: no cover
        pytest.skip("Debian chromium not installed")
    browser = browser_type.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
    try:
        page = browser.new_page()
        url = exported["html"].resolve().as_uri()
        left: list[str] = []

        def route(r):
            if r.request.url != url:  # the page itself is the only thing it may load
                left.append(r.request.url)
                return r.abort()
            return r.continue_()
        page.route("**/*", route)
        page.on("request", lambda r: None if r.url in (url,) or r.url.startswith("data:") else left.append(r.url))
        page.on("dialog", lambda d: (left.append(f"dialog {d.message}"), d.dismiss()))
        page.goto(url)
        page.wait_for_timeout(500)
        # fire what a reader's mouse and keyboard would: inline handlers run on dispatched events
        page.evaluate("""() => document.querySelectorAll('*').forEach(e => {
            for (const t of ['mouseover', 'mouseenter', 'focus', 'click', 'animationstart'])
                e.dispatchEvent(new Event(t, {bubbles: true}));
        })""")
        page.wait_for_timeout(300)
        dom = page.evaluate("""() => ({
            pwned: typeof window.__pwned,
            handlers: [...document.querySelectorAll('*')].flatMap(e => [...e.attributes]
                .filter(a => /^on/i.test(a.name)).map(a => e.tagName + ' ' + a.name)),
            sources: [...document.querySelectorAll('[src], [href], [srcdoc], [data], [action], [formaction]')]
                .map(e => e.getAttribute('src') ?? e.getAttribute('href') ?? e.getAttribute('srcdoc') ?? '')
                .filter(v => !v.startsWith('#') && !v.startsWith('data:image/svg+xml;base64,')),
            scripts: [...document.scripts].filter(s => s.textContent.includes('__pwned')).length,
            styles: [...document.querySelectorAll('style')].filter(s => s.textContent.includes('display:none')).length,
            frames: document.querySelectorAll('iframe, object, embed').length,
            text: document.body.innerText,
        })""")
        text = " ".join(dom.pop("text").split())
    finally:
        browser.close()
    assert dom == {"pwned": "undefined", "handlers": [], "sources": [], "scripts": 0, "styles": 0, "frames": 0}
    assert left == []
    # shown, as text: every payload put into a displayed field, the origin and the signing key's name
    assert {hostile(k, f, 0).split(" ~")[0] for k, f in SHOWN} == set(PAYLOADS)
    shown = [" ".join(hostile(k, f, 0).split()) for k, f in SHOWN]
    missing = [s for s in shown if s not in text]
    assert not missing, missing
    assert ORIGIN in text and KEY_NAME in text
    assert "&#" not in text and "&lt;img" not in text  # escaped once, not twice


def test_code_cells_pin_hostile_values_with_repr(exported):
    """The origin, key and bundle path are Python literals in the first code cell: nothing breaks out."""
    nb = nbformat.read(exported["notebook"], as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for c in code:
        compile(c.source, "cell", "exec")
    tree = ast.parse(code[0].source)
    pinned = {t.id: ast.literal_eval(s.value) for s in tree.body if isinstance(s, ast.Assign)
              for t in s.targets if isinstance(t, ast.Name) and t.id.isupper()}
    assert pinned["PINNED_ORIGIN"] == ORIGIN
    assert pinned["PINNED_VKEY"] == exported["signer"].vkey
    assert pinned["BUNDLE"] == f"../{BUNDLE_DIR}"
    # exactly the statements the template writes, whatever the values held
    kinds = [type(s).__name__ for s in tree.body]
    assert kinds == ["Import", "Assign", "Assign", "Assign", "Assign", "Assign", "Assign", "ImportFrom",
                     "ImportFrom", "Assign", "Assign", "If", "Assign", "If", "Expr", "Expr", "Expr"]


@pytest.mark.browser
def test_jupyterlab_run_all_runs_no_script_and_typesets_no_record_text(exported, browser_type, tmp_path):
    """The renderer of the issue report: JupyterLab (marked, its sanitizer, MathJax) after Run All.

    Outputs a kernel produces in the session are trusted, so JupyterLab does not sanitize them: the
    escaping alone must hold.
    """
    pytest.importorskip("jupyterlab")
    import json
    import socket
    import subprocess
    import sys
    import time
    import urllib.parse
    import urllib.request
    if not os.path.exists(CHROMIUM):  # pragma: no cover
        pytest.skip("Debian chromium not installed")
    settings = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)  # render every cell (no windowing), so every output is in the DOM
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = exported["tmp"]
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg")}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}",
         "--ServerApp.port_retries=0", "--ServerApp.ip=127.0.0.1", "--IdentityProvider.token=t0k",
         f"--ServerApp.root_dir={root}", f"--LabApp.user_settings_dir={tmp_path / 'settings'}",
         f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}", "--LabApp.news_url=",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    browser = browser_type.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:  # the server answers its REST API once it is up
            try:
                urllib.request.urlopen(f"{base}/api/status?token=t0k", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise TimeoutError("JupyterLab did not start") from None
                time.sleep(0.2)
        rel = exported["notebook"].relative_to(root).as_posix()
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        left: list[str] = []
        page.on("request", lambda r: None if r.url.startswith((base, "data:", "blob:")) else left.append(r.url))
        page.goto(f"{base}/lab/tree/{urllib.parse.quote(rel)}?token=t0k")
        appendix = page.locator(".jp-OutputArea-output", has_text="Appendix: sample of annotated texts")

        def read_through() -> int:  # scroll like a reader: JupyterLab typesets math where it is shown
            for y in range(0, 60_000, 700):
                if not page.evaluate("(y) => { const o = document.querySelector('.jp-WindowedPanel-outer');"
                                     " o.scrollTop = y; return o.scrollTop + o.clientHeight < o.scrollHeight; }", y):
                    break
                page.wait_for_timeout(150)
            page.wait_for_timeout(1500)
            return page.evaluate("document.querySelectorAll('.jp-Notebook mjx-container').length")
        appendix.wait_for(timeout=60_000)  # the stored outputs, rendered (sanitized: not trusted yet)
        math_stored = read_through()
        page.get_by_text("Edit", exact=True).first.click()
        page.get_by_text("Clear Outputs of All Cells", exact=True).first.click()
        appendix.wait_for(state="detached", timeout=30_000)
        page.get_by_text("Run", exact=True).first.click()
        page.get_by_text("Run All Cells", exact=True).first.click()
        appendix.wait_for(timeout=120_000)  # the last section, produced by this session's kernel
        math_run = read_through()
        dom = page.evaluate("""() => {
            const nb = document.querySelector('.jp-Notebook');
            return {
                pwned: typeof window.__pwned,
                handlers: [...nb.querySelectorAll('*')].flatMap(e => [...e.attributes]
                    .filter(a => /^on/i.test(a.name)).map(a => e.tagName + ' ' + a.name)),
                media: [...nb.querySelectorAll('.jp-OutputArea iframe, .jp-OutputArea object, .jp-OutputArea embed, '
                                               + '.jp-RenderedMarkdown img, .jp-RenderedMarkdown a[href]')]
                    .map(e => e.tagName + ' ' + (e.getAttribute('src') ?? e.getAttribute('href')))
                    .filter(v => !v.startsWith('A #')),  // JupyterLab's own heading anchors
                errors: nb.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').length,
                text: nb.innerText,
            };
        }""")
        text = " ".join(dom.pop("text").split())
    finally:
        browser.close()
        server.terminate()
        server.wait(20)
    assert dom == {"pwned": "undefined", "handlers": [], "media": [], "errors": 0}
    assert math_stored == math_run == 0  # a "$" from the record is never typeset
    assert left == []
    assert "Verified: OK" in text and "Appendix: sample of annotated texts" in text
    for k, f in SHOWN:
        assert " ".join(hostile(k, f, 0).split()) in text, (k, f)
