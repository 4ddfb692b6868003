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
