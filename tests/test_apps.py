"""The Panel viewers, the dashboard, the serve command and the ipywidgets, without a browser."""
from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest

pn = pytest.importorskip("panel")

from rlhf_audit_kit.apps import (AnnotatorBehaviour, AuditDashboard, Integrity, ModelDrift,  # noqa: E402
                                 PrivacySpend, as_source)
from rlhf_audit_kit.apps._demo import build_demo  # noqa: E402
from rlhf_audit_kit.errors import AuditKitError  # noqa: E402

NOTEBOOK = Path(__file__).parent / "notebooks" / "viewers.ipynb"
VIEWERS = [AnnotatorBehaviour, PrivacySpend, ModelDrift, Integrity]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_demo(tmp_path_factory.mktemp("apps"), size=4_000, seed=0)


@pytest.fixture(scope="module")
def store(demo):
    from rlhf_audit_kit.store import open_store
    s = open_store(demo.store, read_only=True, pseudonymize=False)
    yield s
    s.close()


@pytest.mark.parametrize("cls", VIEWERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("kind", ["bundle", "store"])
def test_viewer_renders(cls, kind, demo, store):
    source = demo.bundle if kind == "bundle" else store
    view = cls(source, verifier=demo.vkey) if cls is Integrity else cls(source)
    layout = view.__panel__()
    assert isinstance(layout, pn.layout.Panel)
    root = pn.panel(view).get_root()
    assert root is not None and root.ref["id"]


def test_every_viewer_param_has_a_doc():
    for cls in [*VIEWERS, AuditDashboard]:
        for name, p in cls.param.objects("existing").items():
            if name != "name":
                assert p.doc, f"{cls.__name__}.{name} has no doc"


def test_viewers_never_write(demo, store):
    size = store.size
    d = AuditDashboard(store, verifier=demo.vkey)
    d.build_all()
    d.integrity.verify()
    d.privacy.estimate = True
    d.privacy.plan()
    assert store.size == size


def test_annotator_filters_and_flags(demo):
    v = AnnotatorBehaviour(demo.bundle)
    v.__panel__()
    flagged = v.table().filter(pl.col("flags") != "")
    reasons = " ".join(flagged["flags"].to_list())
    assert "position bias" in reasons and "length bias" in reasons
    n_all = v.filtered().height
    v.task = "task-00000"
    assert 0 < v.filtered().height < n_all
    v.task = ""
    who = v.flagged()[0]
    v.annotator = who
    assert set(v._items.value["seq"]) <= set(v.filtered().filter(pl.col("annotator") == who)["seq"])
    v.item = int(v._items.value["seq"].iloc[0])
    html = v.pair().object
    assert "Response A" in html and "Response B" in html and "&lt;" not in html[:0]
    lo, hi = v.param.time_window.bounds
    v.time_window = (lo, lo + (hi - lo) / 2)
    assert v.filtered()["t"].max() <= lo + (hi - lo) / 2


def test_privacy_matches_the_ledger(demo, store):
    v = PrivacySpend(demo.bundle)
    ours = v.remaining().select("scope", "epsilon_spent", "remaining").sort("scope")
    ledger = store.privacy.budgets().select("scope", "epsilon_spent", "remaining").sort("scope")
    assert ours["scope"].to_list() == ledger["scope"].to_list()
    for a, b in zip(ours.rows(), ledger.rows()):
        assert a[1] == pytest.approx(b[1]) and a[2] == pytest.approx(b[2])
    v.scope = "pool:vendor-a"
    assert set(v.releases()["scope"]) == {"pool:vendor-a"}
    v.plan_epsilon = 0.1
    ours_plan = v.plan().row(0, named=True)
    theirs = store.privacy.what_if(0.1, ["pool:vendor-a"]).row(0, named=True)
    assert ours_plan["spent_after"] == pytest.approx(theirs["epsilon_after"], rel=1e-6)
    v.plan_epsilon = 50.0
    assert not v.plan()["fits"][0]


def test_drift_and_changepoints(demo):
    v = ModelDrift(demo.bundle)
    v.__panel__()
    t = v.drift()
    assert t["psi"][0] == 0 and t["psi"][-1] > t["psi"][1]
    assert v.checkpoint == max(v.param.checkpoint.objects)
    assert v.changes("kl_metric").height >= 1
    v.detector = "page_hinkley"
    assert v.changes("kl_metric").height >= 1


def test_integrity_proof_and_verify(demo, store):
    for src in (demo.bundle, store):
        v = Integrity(src, verifier=demo.vkey)
        assert v.verify().ok
        p = v.prove(5)
        assert p.ok and p.signed and p.tree_size == as_source(src).latest_snapshot()["tree_size"]
        assert not v.prove(10**9).ok
    assert Integrity(demo.bundle).snapshots().height == 2


def test_integrity_names_first_bad_seq(demo, tmp_path):
    import shutil

    import pyarrow.parquet as pq
    bad = tmp_path / "bundle"
    shutil.copytree(demo.bundle, bad)
    log = sorted(bad.glob("segments/log-*.parquet"))[0]  # the first segment holds seq 7
    t = pq.read_table(log)
    entries = t.column("entry").to_pylist()
    entries[7] = entries[7].replace(b'"', b"'", 1)
    pq.write_table(t.set_column(t.schema.get_field_index("entry"), "entry",
                                [entries]).cast(t.schema), log)
    v = Integrity(bad, verifier=demo.vkey)
    st = v.verify()
    # the verifier names the smallest bad seq over all checks (a root mismatch may name an earlier one)
    assert not st.ok and st.first_bad_seq is not None and st.first_bad_seq <= 7
    from rlhf_audit_kit.apps.integrity import status_html
    assert f"first bad seq: <b>{st.first_bad_seq}</b>" in status_html(st)


def test_dashboard_header_and_lazy_tabs(demo):
    d = AuditDashboard(demo.bundle)
    assert "demo.rlhf-audit-kit.example/log" in d.header_html()
    pn.panel(d).get_root()
    assert d.drift._layout is None  # built when its tab is shown
    d.active = 2
    assert d.drift._layout is not None
    assert isinstance(d.template(), pn.template.FastListTemplate)


def test_serve_cli_guards(demo, tmp_path, capsys):
    from rlhf_audit_kit.apps._auth import MIN_ITERATIONS, set_password
    from rlhf_audit_kit.apps.serve import is_loopback, read_basic_auth
    from rlhf_audit_kit.cli import main
    assert main(["serve", str(demo.bundle), "--address", "0.0.0.0"]) == 1
    assert "refusing" in capsys.readouterr().err
    f = tmp_path / "users"
    set_password(f, "alice", "pw1 long enough", iterations=MIN_ITERATIONS)
    assert list(read_basic_auth(f)) == ["alice"]
    f.write_text("alice:pw1\n")
    with pytest.raises(AuditKitError, match="not hashed"):
        read_basic_auth(f)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("0.0.0.0")


def _doc_text(view) -> str:
    """Every property value of the Bokeh models a view renders to, as one string."""
    root = pn.panel(view).get_root()
    return " ".join(str(m.properties_with_values(include_defaults=False)) for m in root.references())


def test_integrity_never_echoes_a_non_key_file(demo, tmp_path):
    import shutil

    from rlhf_audit_kit.errors import KeysError
    secret = (demo.keys / "pseudonym.key").read_text().strip()
    bad = tmp_path / "bundle"
    shutil.copytree(demo.bundle, bad)
    (bad / "verifier.vkey").write_text(secret + "\n")  # a secret where the verifier key belongs
    view = Integrity(bad)
    text = _doc_text(view)
    assert secret not in text and secret[:16] not in text
    assert "not a valid verifier key (its content is not shown)" in text
    assert view._src.vkey() is None
    good = Integrity(demo.bundle)
    assert demo.vkey in _doc_text(good)  # a real key is shown, parsed
    with pytest.raises(KeysError) as e:  # a secret given as --verifier is refused, not quoted
        Integrity(demo.bundle, verifier=demo.keys / "pseudonym.key").__panel__()
    assert secret not in str(e.value) and "does not hold a verifier key" in str(e.value)


def test_malformed_note_is_named_not_shown(demo, tmp_path):
    import shutil
    bad = tmp_path / "bundle"
    shutil.copytree(demo.bundle, bad)
    for note in (bad / "checkpoint.note", *bad.glob("checkpoints/*.note")):  # the copy and the one named
        note.write_text("not a checkpoint: secret-looking-text\n")
    d = AuditDashboard(bad)
    assert "the latest checkpoint note does not parse" in d.header_html()
    text = _doc_text(d.integrity)
    assert "the checkpoint note does not parse" in text and "secret-looking-text" not in text


def test_hostile_names_are_escaped(demo, tmp_path):
    import shutil
    payload = '<img src=x onerror="window.__pwned=1">'
    bundle = tmp_path / payload
    shutil.copytree(demo.bundle, bundle)
    d = AuditDashboard(bundle)
    assert d.template().title == "RLHF audit: &lt;img src=x onerror=&quot;window.__pwned=1&quot;&gt;"
    assert payload not in d.header_html() and "&lt;img src=x" in d.header_html()


@pytest.mark.parametrize("n", [0, 1, 10])
def test_tiny_stores_render_not_enough_data(tmp_path, n):
    from factories import annotation
    from rlhf_audit_kit.store import open_store
    with open_store(tmp_path / "tiny.duckdb", pseudonymize=False) as s:
        if n:  # every pair of equal length: no length statistic; one annotator per item: no agreement
            s.extend([annotation(i, response_a="same", response_b="same") for i in range(n)])
    d = AuditDashboard(tmp_path / "tiny.duckdb")
    d.build_all()
    texts = {name: _doc_text(v) for name, v in d.views.items()}
    assert "not enough data: no item was judged by two annotators" in texts["Annotators"]
    assert "not enough data: no a/b choice between responses of different lengths" in texts["Annotators"]
    assert bool(re.search("not enough data: no a/b choice(?! between)", texts["Annotators"])) == (n == 0)
    assert "not enough data: no reward scores" in texts["Model drift"]
    assert "not enough data: no privacy budget declared" in texts["Privacy"]
    if n:
        assert d.annotators.table()["share_longer"].null_count() == d.annotators.table().height


def test_widgets(demo):
    from rlhf_audit_kit.widgets import AnnotationBrowser, VerifyButton
    b = AnnotationBrowser(demo.bundle, page_size=3)
    assert len(b.rows()) == 3 and "page 1 of" in b.status.value
    b.choice.value = "tie"
    assert all(r["choice"] == "tie" for r in b.rows())
    b.next.click()
    assert b.page == 1
    b.task.value = "no-such-task"
    assert b.total == 0 and "no annotations match" in b.body.value
    v = VerifyButton(demo.bundle, verifier=demo.vkey)
    v.button.click()
    assert v.result.ok and "Verified" in v.output.value and "NOT PINNED" not in v.output.value
    own = VerifyButton(demo.bundle)  # the bundle's own key: self-consistency only, said in red
    own.button.click()
    assert own.result.ok and not own.result.pinned and "NOT PINNED" in own.output.value


def test_not_pinned_is_said_in_red(demo):
    assert "NOT PINNED" in AuditDashboard(demo.bundle).header_html()
    assert "NOT PINNED" not in AuditDashboard(demo.bundle, verifier=demo.vkey).header_html()
    st = Integrity(demo.bundle).verify()
    from rlhf_audit_kit.apps.integrity import status_html
    assert st.ok and not st.pinned and "class='not-pinned' style='color:#d62728" in status_html(st)
    assert Integrity(demo.bundle, verifier=demo.keys).verify().pinned


def test_widgets_show_hostile_strings_as_text(tmp_path):
    from factories import annotation
    from rlhf_audit_kit.store import open_store
    from rlhf_audit_kit.widgets import AnnotationBrowser, VerifyButton
    payload = '<img src=x onerror="window.__pwned=1"><script>x()</script>![x](http://127.0.0.2:9/leak)'
    path = tmp_path / '<img src=x onerror="window.__pwned=1">.duckdb'
    with open_store(path, pseudonymize=False) as s:
        s.extend([annotation(i, prompt=payload, response_a=payload, annotator=payload, task_id=payload,
                             model_a=payload) for i in range(3)])
    b = AnnotationBrowser(path)
    assert payload in b.annotator.options  # a dropdown option is text
    v = VerifyButton(path)
    for html in (b.body.value, v.output.value):
        assert "<img src=x" not in html and "<script>" not in html
    assert "&lt;img src=x onerror=&quot;window.__pwned=1&quot;&gt;&lt;script&gt;" in b.body.value
    assert "&lt;img src=x" in v.output.value


def test_viewers_notebook_runs():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=180, kernel_name="python3").execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
