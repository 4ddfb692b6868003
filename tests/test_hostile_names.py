"""Generated hostile names (mathtext, markup, template syntax, invisible, right-to-left, compatibility and
non-UTF-8 characters) through the report path: a CSV's header and labels -> loading and its checks -> the
figures -> Jinja and WeasyPrint -> the PDF, read back. A name is either refused in one line, or reaches the
report exactly as it was given, drawn and printed as text."""

import csv
import io
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pypdf import PdfReader

from tasks.data.dataset import reading
from tasks.data.sources import load_dataset
from tasks.report import figures
from tasks.report.render import RunFilesFetcher, render_pdf
from tasks.run.errors import InputError

FRAGMENTS = ["$\\frac{a}{", "$x^2$", "<b>", "</p><script>alert(1)</script>", "&amp;", "{{ 7*7 }}", "{% raw %}",
             "\u200b", "\u202e", "\u00ad", "ｆｕｌｌ", "e\u0301", "\udce9", "\\", '"', ",", "'", "  ", "\t", "..",
             "/etc/passwd", "Unnamed: 0", "%s%n", "名前", "😀"]
name_part = st.one_of(st.sampled_from(FRAGMENTS), st.text(alphabet=string.ascii_letters, min_size=1, max_size=6))
hostile_name = st.lists(name_part, min_size=1, max_size=4).map("".join)


def write_csv(path, features: list[str], classes: list[str], rows: int = 24) -> None:
    """A CSV as a careless tool would write it: the names' bytes as given (non-UTF-8 ones included)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*features, "label"])
    rng = np.random.default_rng(0)
    for i in range(rows):
        writer.writerow([*(f"{v:.3f}" for v in rng.normal(size=len(features))), classes[i % len(classes)]])
    path.write_bytes(buffer.getvalue().encode("utf-8", errors="surrogateescape"))


@given(features=st.lists(hostile_name, min_size=1, max_size=4, unique=True),
       classes=st.lists(hostile_name, min_size=2, max_size=3, unique=True))
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_hostile_names_are_refused_in_one_line_or_reach_the_pdf_as_text(tmp_path_factory, features, classes):
    work = tmp_path_factory.mktemp("names")
    path = work / "hostile.csv"
    write_csv(path, features, classes)
    try:
        data = load_dataset(f"csv:{path}", label="label")
    except InputError as exc:
        assert "\n" not in str(exc)
        return
    assert data.feature_names == features  # nothing renamed, trimmed or normalised on the way
    assert sorted(data.class_names) == sorted(classes)
    assert len({reading(n) for n in features}) == len(features)  # what was accepted can be told apart

    run_dir = work / "run"
    (run_dir / "figures").mkdir(parents=True)
    values = np.linspace(1.0, 0.1, len(features))
    figure = figures.feature_bars(values, features, f"SHAP values for '{classes[0]}'", run_dir / "figures" / "f.png")
    figures.global_importance_bars(np.tile(values, (len(classes), 1)), features, classes,
                                   run_dir / "figures" / "g.png")
    fetcher = RunFilesFetcher(run_dir)
    pdf = render_pdf("audit_probe.html.j2", {"name": " | ".join(features + classes), "figure": "figures/f.png",
                                             "escape": "figures/g.png", "css": ""}, run_dir, run_dir / "r.pdf",
                     fetcher=fetcher)
    assert figure.stat().st_size > 1000
    # (Lines wrap anywhere; pypdf reads a paragraph set partly in a CJK fallback font as UTF-16, NULs between.)
    text = "".join("".join(page.extract_text() for page in PdfReader(pdf).pages).replace("\x00", "").split())
    for name in features + classes:
        printable = "".join(name.split())
        if printable.isascii() and printable.isprintable():  # (text extraction reorders bidi and combining marks)
            assert printable in text, name
    assert "49" not in text  # template syntax stays text
    assert not any(url.startswith("file:///etc") for url in fetcher.requested if url not in fetcher.refused)


def test_the_fragments_themselves_are_refused_or_kept_one_by_one(tmp_path):
    """Each fragment alone as a feature name, beside a plain one: the deterministic floor under the property."""
    outcomes = {}
    for i, fragment in enumerate(FRAGMENTS):
        path = tmp_path / f"{i}.csv"
        write_csv(path, [fragment, "plain"], ["yes", "no"])
        try:
            outcomes[fragment] = load_dataset(f"csv:{path}", label="label").feature_names[0]
        except InputError as exc:
            outcomes[fragment] = str(exc)
    assert "is not UTF-8" in outcomes["\udce9"] or "not valid UTF-8" in outcomes["\udce9"]
    assert "have no name" in outcomes["Unnamed: 0"] and "have no name" in outcomes["  "]
    # A right-to-left override reversed the names printed after it in the PDF (found by the property above).
    assert "holds a bidirectional control character" in outcomes["\u202e"]
    for fragment in ("$\\frac{a}{", "<b>", "{{ 7*7 }}", "ｆｕｌｌ", "名前", "😀", "/etc/passwd", "e\u0301"):
        assert outcomes[fragment] == fragment, (fragment, outcomes[fragment])


KEPT = [f for f in FRAGMENTS if f not in ("\udce9", "\u202e", "Unnamed: 0", "  ", "\t")]  # (refused: above)
kept_name = st.builds(lambda parts, letters: "".join(parts) + letters,  # (letters: never only invisible)
                      st.lists(st.sampled_from(KEPT), min_size=1, max_size=3),
                      st.text(alphabet=string.ascii_letters, min_size=1, max_size=4))


@pytest.mark.slow
@given(names=st.lists(kept_name, min_size=8, max_size=8, unique_by=reading))
@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_generated_names_go_through_a_whole_run_to_an_intact_report(prefect_server, tmp_path_factory, names):
    """The whole flow (training, every technique for tables, fairness by a protected attribute, the PDF) on a CSV
    whose feature, class, protected attribute and group names are all generated: the run completes, the files
    keep the names exactly, the PDF prints them, and a name its font cannot draw is spelled out in Limitations."""
    import pandas as pd

    from tasks.run import layout
    from tasks.run.formats import read_split
    from tasks.run.verify import verify_run
    from tests.conftest import run_report

    features, classes, attribute, groups = names[:3], names[3:5], names[5], names[6:]
    rng = np.random.default_rng(0)
    labels = np.arange(200) % 2  # (40 validation rows: two groups of 20, enough for the fairness section)
    frame = pd.DataFrame({f: rng.normal(size=200) + (labels if i == 0 else 0) for i, f in enumerate(features)})
    frame[attribute] = [groups[i // 2 % 2] for i in range(200)]
    frame["label"] = [classes[y] for y in labels]
    work = tmp_path_factory.mktemp("hostile-run")
    frame.to_csv(work / "data.csv", index=False)

    state, result = run_report(work / "reports", dataset=f"csv:{work / 'data.csv'}", label="label",
                               protected=[attribute], epochs=2, background=10, explain_rows=4)
    assert state.is_completed(), state.message
    run_dir = result["run_dir"]
    train = read_split(layout.path(run_dir, "train"))
    assert train.feature_names == features and sorted(train.class_names) == sorted(classes)
    assert list(train.groups) == [attribute] and set(train.groups[attribute]) == set(groups)
    text = "".join("".join(page.extract_text() for page in PdfReader(result["pdf"]).pages).replace("\x00", "").split())
    for name in names:
        printable = "".join(name.split())
        if printable.isascii() and printable.isprintable():
            assert printable in text, name
        if figures.undrawable(name):  # boxes in the figures: spelled out, so an auditor can read it
            assert "".join(ascii(name).split()) in text, name
    assert verify_run(run_dir) == []
