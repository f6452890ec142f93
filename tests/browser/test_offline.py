"""Offline: the served dashboard, a notebook's HTML export and the docs pages show their charts in
headless Chromium while every request to a host other than this machine is blocked, and any such
request fails the test. The served page says it is loading before the websocket brings the views.
"""
from __future__ import annotations

import re
import urllib.request
from urllib.parse import urlparse

import pytest
from playwright.sync_api import expect

from .conftest import ROOT
from .served import served_dashboards

pytestmark = pytest.mark.browser

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}
LOADING = "Loading the audit record…"
# Some Bokeh plot has rows to draw (plots are canvases: their data is checked in BokehJS).
HAS_CHART = """() => window.Bokeh !== undefined && Bokeh.documents.some(d => [...d.all_models].some(
    m => m.type === 'GlyphRenderer' && m.data_source.get_length() > 0))"""


def third_parties_blocked(page) -> list[str]:
    """Abort every request (and websocket) that would leave this machine; returns them as they come."""
    blocked: list[str] = []

    def route(r):
        u = urlparse(r.request.url)
        if u.scheme in ("file", "data", "blob") or u.hostname in LOCAL_HOSTS:
            return r.continue_()
        blocked.append(r.request.url)
        return r.abort()
    page.route("**/*", route)
    page.on("websocket", lambda ws: None if urlparse(ws.url).hostname in LOCAL_HOSTS else blocked.append(ws.url))
    return blocked


def assert_chart_shown(page, timeout=30_000):
    page.wait_for_function(HAS_CHART, timeout=timeout)
    expect(page.locator("canvas").first).to_be_visible()


def test_served_dashboard_says_loading_then_shows_charts_with_no_third_party(page, demo, shots):
    with served_dashboards() as start:
        url = start(demo.bundle, follow=False) + "/"  # as `serve --no-follow`: the page is the same, the start faster
        # what a reader gets before any script runs (a time-budget screenshot, a slow websocket)
        first = urllib.request.urlopen(url, timeout=30).read().decode("utf-8")
        body = first[first.index("<body"):]
        assert re.search(r'<div id="audit-loading"[^>]*>' + LOADING + "</div>", body), body[:2000]

        blocked = third_parties_blocked(page)
        page.goto(url)
        page.locator(".audit-header").first.wait_for()
        assert_chart_shown(page)
        expect(page.locator("#audit-loading")).to_be_hidden()  # the views replaced the note
        page.screenshot(path=str(shots / "offline-served.png"))
    assert blocked == []


@pytest.mark.filterwarnings("ignore:Your element with mimetype")  # nbconvert on Panel's empty outputs
def test_notebook_html_export_shows_the_dashboard_with_no_third_party(page, tmp_path):
    # what `jupyter nbconvert --to html --HTMLExporter.require_js_url= --HTMLExporter.mathjax_url=`
    # (the command docs/notebooks.md gives) writes, in-process: nbconvert's require.js and MathJax are left out
    from nbconvert import HTMLExporter
    from traitlets.config import Config
    exporter = HTMLExporter(config=Config(HTMLExporter={"require_js_url": "", "mathjax_url": ""}))
    html, _ = exporter.from_filename(str(ROOT / "notebooks" / "07_dashboard.ipynb"))
    out = tmp_path / "07_dashboard.html"
    out.write_text(html, encoding="utf-8")
    blocked = third_parties_blocked(page)
    page.goto(out.as_uri())
    assert_chart_shown(page)
    expect(page.locator(".audit-header").first).to_contain_text("signed snapshot")
    assert blocked == []


@pytest.mark.slow
def test_docs_pages_ask_no_third_party_and_show_the_dashboard(page, docs_site):
    # every page: no script, stylesheet or font from another host (Google Fonts, CDNs)
    external = re.compile(r'<(?:script|link)\b[^>]*\b(?:src|href)="(?:https?:)?//(?!localhost|127\.0\.0\.1)[^"]*"')
    found = {str(p.relative_to(docs_site)): external.findall(p.read_text(encoding="utf-8"))
             for p in docs_site.rglob("*.html")}
    assert {k: v for k, v in found.items() if v} == {}
    # the dashboard notebook's page renders its charts from what the site carries
    blocked = third_parties_blocked(page)
    page.goto((docs_site / "notebooks" / "07_dashboard" / "index.html").as_uri())
    assert_chart_shown(page)
    page.wait_for_timeout(300)  # the theme's own late requests (repository facts) would come now
    assert blocked == []
