"""The served dashboard in headless Chromium: every tab, a filter per tab, proofs, basic auth."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from playwright.sync_api import expect

from .conftest import ROOT, free_port, wait_liveness, wait_until

pytestmark = pytest.mark.browser

# Every array of one column in the page's Bokeh data sources (plots are canvases: check their data).
COLUMN_ARRAYS = """(col) => {
  const out = [];
  for (const doc of Bokeh.documents) for (const m of doc.all_models) {
    const d = m.data;
    if (d && typeof d === 'object' && !(d instanceof Map) && col in d) out.push(Array.from(d[col]));
    else if (d instanceof Map && d.has(col)) out.push(Array.from(d.get(col)));
  }
  return out;
}"""


def arrays(page, col):
    return page.evaluate(COLUMN_ARRAYS, col)


def select_in(page, label):
    return page.locator(".bk-input-group").filter(has_text=label).locator("select").first


def open_tab(page, name):
    page.locator(".bk-tab").filter(has_text=name).first.click()


def test_annotators_tab_filters_and_drill_down(dashboard_page, shots):
    page, dash, logs = dashboard_page
    view = dash.annotators
    wait_until(lambda: len(arrays(page, "agreement")) > 0, page)
    page.wait_for_timeout(500)
    page.screenshot(path=str(shots / "annotators.png"), full_page=True)
    if os.environ.get("RLHF_AUDIT_UPDATE_SCREENSHOT"):  # tests never change a tracked file unless asked
        shutil.copy(shots / "annotators.png", ROOT / "docs" / "img" / "dashboard.png")

    # pick a flagged annotator in the browser: timelines, bias marker and item table follow
    who = view.flagged()[0]
    label = view._labels[who]
    select_in(page, "Annotator").select_option(label=label)
    wait_until(lambda: view.annotator == who, page)
    daily = view._daily()  # the line joins whole days; partly covered ones are marked apart
    expected = sum(n for n, part in zip(daily["items"], daily["partial"]) if not part)
    try:
        wait_until(lambda: any(sum(a) == expected for a in arrays(page, "items")), page)
    except TimeoutError:
        raise AssertionError(f"{expected} not in {[sum(a) for a in arrays(page, 'items')]}")
    first_seq = str(int(view._items.value.iloc[0]["seq"]))
    cell = page.locator('.tabulator-cell[tabulator-field="seq"]').filter(has_text=first_seq).first
    expect(cell).to_be_visible()
    cell.click()
    wait_until(lambda: view.item == int(first_seq), page)
    expect(page.locator(".annotation-pair").first).to_contain_text("Response A")
    expect(page.locator(".annotation-pair").first).to_contain_text(f"seq {first_seq}")

    # a task-batch filter changes the agreement heatmap's data
    before = json.dumps(sorted(arrays(page, "agreement"), key=len))
    box = page.locator("input[placeholder='e.g. task-0001']").first
    box.fill("task-00000")
    box.press("Enter")
    wait_until(lambda: view.task == "task-00000", page)
    wait_until(lambda: json.dumps(sorted(arrays(page, "agreement"), key=len)) != before, page)
    n_pairs = view.filtered_pairs().height
    assert 0 < n_pairs < view._pairs.height
    expect(page.locator(".ann-summary").first).to_contain_text(f"{view.filtered().height:,} judgements")
    page.screenshot(path=str(shots / "annotators-filtered.png"), full_page=True)


def test_privacy_tab_scope_and_what_if(dashboard_page, shots):
    page, dash, logs = dashboard_page
    open_tab(page, "Privacy")
    view = dash.privacy
    wait_until(lambda: view._layout is not None, page)
    scope_cells = page.locator('.tabulator-cell[tabulator-field="scope"]')
    expect(scope_cells.filter(has_text="global").first).to_be_visible(timeout=30_000)  # slow on 2 busy cores
    page.wait_for_timeout(300)
    page.screenshot(path=str(shots / "privacy.png"), full_page=True)
    select_in(page, "Scope").select_option("pool:vendor-a")
    wait_until(lambda: view.scope == "pool:vendor-a", page)
    wait_until(lambda: scope_cells.count() > 0 and all(
        t == "pool:vendor-a" for t in scope_cells.all_inner_texts()), page)
    page.get_by_role("button", name="Estimate").click()
    expect(page.locator(".what-if").first).to_contain_text("pool:vendor-a")
    expect(page.locator(".what-if").first).to_contain_text("fits")


def test_drift_tab_checkpoint_changes_histogram(dashboard_page, shots):
    page, dash, logs = dashboard_page
    open_tab(page, "Model drift")
    view = dash.drift
    wait_until(lambda: view._layout is not None and len(arrays(page, "top")) >= 2, page, 30_000)
    page.wait_for_timeout(500)
    page.screenshot(path=str(shots / "drift.png"), full_page=True)
    before = json.dumps(sorted(arrays(page, "top")))
    steps = view.param.checkpoint.objects
    target = steps[len(steps) // 2]
    select_in(page, "Checkpoint step").select_option(str(target))
    wait_until(lambda: view.checkpoint == target, page)
    wait_until(lambda: json.dumps(sorted(arrays(page, "top"))) != before, page)


def test_integrity_tab_inclusion_proof_and_verify(dashboard_page, shots, demo):
    page, dash, logs = dashboard_page
    open_tab(page, "Integrity")
    view = dash.integrity
    wait_until(lambda: view._layout is not None, page)
    expect(page.locator("pre.checkpoint-note").first).to_contain_text("demo.rlhf-audit-kit.example/log")
    seq_box = page.locator(".bk-input-group").filter(has_text="seq").locator("input").first
    seq_box.fill("42")
    seq_box.press("Enter")
    wait_until(lambda: view.seq == 42, page)
    page.get_by_role("button", name="Prove inclusion").click()
    expect(page.locator(".proof-message").first).to_contain_text("event 42 is included in the signed tree")
    assert view.proof.ok and view.proof.signed
    page.get_by_role("button", name="Verify now").click()
    expect(page.locator(".verify-message").first).to_contain_text("OK:", timeout=30_000)
    key = page.locator(".vkey input").first
    expect(key).to_have_value(demo.vkey)
    page.screenshot(path=str(shots / "integrity.png"), full_page=True)


def test_basic_auth_refuses_then_admits(page, demo, tmp_path, shots):
    auth = tmp_path / "users.txt"
    subprocess.run([sys.executable, "-m", "rlhf_audit_kit.cli", "serve-passwd", str(auth), "auditor"],
                   input="correct-horse-battery\n", text=True, check=True, capture_output=True)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rlhf_audit_kit.cli", "serve", str(demo.bundle),
                             "--port", str(port), "--basic-auth", str(auth)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_liveness(port)
        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *a, **k):
                return None
        opener = urllib.request.build_opener(NoRedirect)
        with pytest.raises(urllib.error.HTTPError) as err:
            opener.open(f"http://localhost:{port}/", timeout=10)
        assert err.value.code in (302, 401, 403)
        assert err.value.code != 302 or "/login" in err.value.headers["Location"]

        page.goto(f"http://localhost:{port}/")
        assert "/login" in page.url
        expect(page.locator(".audit-header")).to_have_count(0)
        def log_in(password):
            page.locator("input[name=username]").fill("auditor")
            page.locator("input[name=password]").fill(password)
            page.locator("input[name=password]").press("Enter")
        log_in("wrong")
        expect(page.locator(".errormessage")).to_contain_text("Invalid username or password")
        log_in("correct-horse-battery")  # too soon after a failure: refused, whatever the password
        expect(page.locator(".errormessage")).to_contain_text("Too many failed logins")
        page.wait_for_timeout(1100)
        log_in("correct-horse-battery")
        expect(page.locator(".audit-header").first).to_contain_text("bundle", timeout=30_000)
        page.screenshot(path=str(shots / "served-after-login.png"), full_page=True)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
