"""The served dashboard (rlhf_audit_kit.apps.serve) in headless Chromium: hostile names and strings
are shown as text and never run, no request leaves the server, and tiny stores render."""
from __future__ import annotations

import logging
from urllib.parse import urlparse

import pytest
from playwright.sync_api import expect

from .served import served_dashboards

from .conftest import wait_until

pytestmark = pytest.mark.browser

IMG = '<img src=x onerror="window.__pwned=1">'
SCRIPT = "<script>window.__pwned=1</script>"
MD = "![x](http://127.0.0.2:9/leak)"
PAYLOAD = f"{IMG} {SCRIPT} {MD}"


def _hostile_record(folder):
    """A bundle named ``IMG`` whose every free-text field carries the payloads."""
    from factories import annotation

    from rlhf_audit_kit.keys import init_keys, load_signer
    from rlhf_audit_kit.store import open_store
    keys = folder / "keys"
    info = init_keys(keys, SCRIPT, no_passphrase=True)  # key names allow no spaces
    with open_store(folder / "a.duckdb", keys=keys, origin=f"{SCRIPT}/{IMG}", pseudonymize=False) as s:
        s.extend([annotation(i, annotator=f"{IMG}{i % 3}", task_id=SCRIPT, guideline_version=PAYLOAD,
                             dataset=PAYLOAD, model_a=PAYLOAD, rationale=PAYLOAD, prompt=PAYLOAD,
                             response_a=PAYLOAD, response_b=PAYLOAD + " longer") for i in range(60)])
        s.extend([{"kind": "dataset", "name": PAYLOAD, "version": PAYLOAD, "description": PAYLOAD,
                   "source": PAYLOAD, "license": PAYLOAD}])
        s.extend([{"kind": "oversight", "reviewer": PAYLOAD, "decision": "note", "reason": PAYLOAD,
                   "subject_run": PAYLOAD, "role": PAYLOAD}])
        s.extend([{"kind": "checkpoint", "run_id": PAYLOAD, "step": i, "uri": PAYLOAD, "base_model": PAYLOAD,
                   "content_hash": "sha256:" + "0" * 64, "parent": PAYLOAD} for i in range(2)])
        s.extend([{"kind": "reward_score", "reward_model": PAYLOAD, "sample_id": f"s{i}", "score": float(i % 7),
                   "run_id": PAYLOAD, "step": (i // 20) * 10, "response_length": i} for i in range(60)])
        s.extend([{"kind": "train_step", "run_id": PAYLOAD, "algorithm": "ppo", "step": i,
                   "metrics": {PAYLOAD: float(i), "objective/kl": i * 0.1}} for i in range(30)])
        s.privacy.set_budget(f"pool:{PAYLOAD}", 3.0, 1e-6, description=PAYLOAD)
        s.privacy.set_budget("global", 3.0, 1e-6, description=PAYLOAD)
        s.privacy.release("annotator_count", epsilon=0.2, scopes=[f"pool:{PAYLOAD}", "global"])
        s.snapshot(load_signer(keys)).export(folder / IMG, verifier=info.vkey)
    return folder / IMG


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    return _hostile_record(tmp_path_factory.mktemp("hostile"))


@pytest.fixture
def served_dashboard(caplog):
    """Serve with ``rlhf_audit_kit.apps.serve``; server-side errors are collected from the log (Panel
    and Bokeh log an exception in a session, they do not raise it)."""
    caplog.set_level(logging.ERROR)
    with served_dashboards() as start:
        yield lambda source: start(source) + "/"


def _open(page, url):
    """Open the dashboard; returns the list of every requested URL (filled as the page runs)."""
    requests, logs = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: logs.append(m.text))
    page.goto(url)
    wait_until(lambda: any("is now open" in m for m in logs), page, 30_000)
    page.locator(".audit-header").first.wait_for()
    return requests


def _tab(page, name):
    page.locator(".bk-tab").filter(has_text=name).first.click()
    page.wait_for_timeout(800)


def _select(page, label, option_text):
    sel = page.locator(".bk-input-group").filter(has_text=label).locator("select").first
    value = next(o.get_attribute("value") for o in sel.locator("option").all() if option_text in o.inner_text())
    sel.select_option(value)


def test_hostile_strings_are_shown_never_run(page, served_dashboard, hostile, shots):
    requests = _open(page, served_dashboard(hostile))
    pwned = "() => window.__pwned"
    header = page.locator(".audit-header").first
    expect(header).to_contain_text(IMG)                   # the bundle's folder name, as text
    expect(header).to_contain_text(f"{SCRIPT}/{IMG}")     # the origin
    expect(page.locator("a.title").first).to_contain_text(IMG)  # the template title

    # Annotators: pick an annotator, open one of their items (prompt, responses, rationale)
    _select(page, "Annotator", "<img")
    cell = page.locator('.tabulator-cell[tabulator-field="seq"]').first
    expect(cell).to_be_visible()
    cell.click()
    pair = page.locator(".annotation-pair").first
    expect(pair).to_contain_text(MD)
    expect(pair).to_contain_text(SCRIPT)
    assert page.evaluate(pwned) is None

    _tab(page, "Privacy")
    expect(page.locator('.tabulator-cell[tabulator-field="scope"]').filter(has_text=MD).first).to_be_visible(
        timeout=30_000)
    _select(page, "Scope", "pool:")
    page.get_by_role("button", name="Estimate").click()
    expect(page.locator(".what-if").first).to_contain_text(IMG)
    assert page.evaluate(pwned) is None

    _tab(page, "Model drift")
    expect(page.locator(".bk-input-group").filter(has_text="Run").locator("select").first).to_contain_text(
        SCRIPT, timeout=30_000)
    _select(page, "Checkpoint step", "0")
    assert page.evaluate(pwned) is None

    _tab(page, "Integrity")
    assert page.locator(".vkey input").first.input_value().startswith(SCRIPT + "+")
    expect(page.locator("pre.checkpoint-note").first).to_contain_text(f"{SCRIPT}/{IMG}")
    page.get_by_role("button", name="Verify now").click()
    expect(page.locator(".verify-message").first).to_contain_text("OK", timeout=30_000)
    page.wait_for_timeout(500)
    page.screenshot(path=str(shots / "hostile-integrity.png"), full_page=True)

    assert page.evaluate(pwned) is None
    hosts = {urlparse(u).hostname for u in requests if not u.startswith(("blob:", "data:"))}
    assert hosts == {"localhost"}, sorted(u for u in requests if urlparse(u).hostname != "localhost")


@pytest.mark.parametrize("n", [0, 1, 10])
def test_tiny_store_says_not_enough_data(page, served_dashboard, tmp_path, caplog, n):
    from factories import annotation

    from rlhf_audit_kit.store import open_store
    with open_store(tmp_path / "tiny.duckdb", pseudonymize=False) as s:
        if n:  # all pairs of equal length, each item judged once
            s.extend([annotation(i, response_a="same", response_b="same") for i in range(n)])
    requests = _open(page, served_dashboard(tmp_path / "tiny.duckdb"))
    expect(page.locator(".audit-header").first).to_contain_text(f"{n} events")
    notes = page.locator(".not-enough-data")
    expect(notes.filter(has_text="no item was judged by two annotators").first).to_be_visible()
    expect(notes.filter(has_text="no a/b choice between responses of different lengths").first).to_be_visible()
    for tab, why in (("Privacy", "no privacy budget declared"), ("Model drift", "no reward scores"),
                     ("Integrity", None)):
        _tab(page, tab)
        if why:
            expect(notes.filter(has_text=why).first).to_be_visible()
    expect(page.locator(".verify-message")).to_have_count(0)  # Integrity rendered, not yet verified
    page.get_by_role("button", name="Verify now").click()
    expect(page.locator(".verify-message").first).to_be_visible(timeout=30_000)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    assert all(urlparse(u).hostname == "localhost" for u in requests if not u.startswith(("blob:", "data:")))
