import pickle

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pypdf import PdfReader
from weasyprint import CSS, HTML

from tasks.report.build import render_report
from tasks.report.render import RunFilesFetcher, fixed, template_environment
from tasks.run import layout
from tasks.run.provenance import environment
from tests.conftest import run_report, write_cifar10

HOSTILE = ['<img src="file:///etc/passwd">', "x{background:url(file:///etc/hostname)}", "<b>bold</b> & co"]


def pdf_text(path) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(path).pages)


def only_figures_and_attachments(url: str, run_dir: str) -> bool:
    """What a report may read: its figures, and the files it embeds."""
    embedded = {layout.path(run_dir, key).as_uri() for key in layout.ATTACHMENTS}
    return url.startswith(layout.folder(run_dir, "figures").as_uri() + "/") or url in embedded


def rendered_again(result: dict) -> RunFilesFetcher:
    """Render a finished run's report once more, through a fetcher that records every URL asked for."""
    fetcher = RunFilesFetcher(result["run_dir"])
    render_report(result["run_dir"], result["results"], {"epochs": 1, "background": 5}, environment(), {"id": None},
                  fetcher=fetcher)
    return fetcher


def test_jinja_environment_autoescapes():
    env = template_environment()
    assert env.from_string("{{ name }}").render(name="<script>x</script>") == "&lt;script&gt;x&lt;/script&gt;"


def test_fetcher_serves_run_files_and_refuses_everything_else(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "figures").mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(b"not for the report")
    from PIL import Image

    Image.new("RGB", (4, 4), (255, 0, 0)).save(run_dir / "figures" / "ok.png")
    html = """<link rel="stylesheet" href="http://127.0.0.1:9/evil.css">
    <img src="figures/ok.png"><img src="../secret.png"><img src="file:///etc/passwd">
    <img src="data:image/png;base64,iVBORw0KGgo="><div style="background: url(file:///etc/hostname)">x</div>"""
    fetcher = RunFilesFetcher(run_dir)
    css = CSS(string="body { background: url(/etc/hostname) }", url_fetcher=fetcher, base_url=run_dir.as_uri() + "/")
    HTML(string=html, base_url=run_dir.as_uri() + "/", url_fetcher=fetcher).write_pdf(tmp_path / "x.pdf", stylesheets=[css])
    served = set(fetcher.requested) - set(fetcher.refused)
    assert served == {(run_dir / "figures" / "ok.png").as_uri()}
    refused = " ".join(fetcher.refused)
    for needle in ("evil.css", "secret.png", "/etc/passwd", "/etc/hostname", "data:image/png"):
        assert needle in refused


@pytest.fixture(scope="module")
def hostile_run(prefect_server, tmp_path_factory):
    """The whole flow on a tiny CIFAR-10 directory whose class names are hostile."""
    root = write_cifar10(tmp_path_factory.mktemp("cifar"), per_batch=40)
    meta_path = root / "cifar-10-batches-py" / "batches.meta"
    names = HOSTILE + [f"class {i}" for i in range(len(HOSTILE), 10)]
    meta_path.write_bytes(pickle.dumps({"label_names": names}))
    _, result = run_report(tmp_path_factory.mktemp("out"), dataset=f"cifar10:{root}", epochs=1, background=5,
                           explain_rows=4)
    return result, rendered_again(result)


def test_hostile_class_names_come_out_as_text(hostile_run):
    result, fetcher = hostile_run
    text = pdf_text(result["pdf"])
    for name in HOSTILE:
        assert name in text
    assert fetcher.refused == []  # nothing in the report asked for a file outside the run


def test_renderer_read_only_run_files(hostile_run):
    result, fetcher = hostile_run
    run_uri = result["run_dir"]
    assert fetcher.requested, "the report embeds figures"
    assert all(only_figures_and_attachments(url, run_uri) for url in fetcher.requested)


def test_report_pdf_has_every_section_and_metadata(hostile_run):
    result, _ = hostile_run
    reader = PdfReader(result["pdf"])
    text = pdf_text(result["pdf"])
    for heading in ("Model validation report", "1. Purpose and use", "2. Design and data", "Model and training",
                    "Weights and biases", "3. Performance and testing", "Explanations of individual decisions",
                    "Misclassified images", "The checks of this run", "5. Findings register and limitations",
                    "6. Monitoring and changes", "7. Reproducibility", "Artifacts (SHA-256)", "Sign-off"):
        assert heading in text, heading
    assert reader.metadata.title.startswith("Compliance report: cifar10:")
    assert np.isfinite(len(reader.pages)) and len(reader.pages) >= 8


@pytest.fixture(scope="module")
def hostile_table_run(prefect_server, tmp_path_factory):
    """The whole flow on a table whose column and class names are hostile."""
    import pandas as pd

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({name: rng.normal(size=120) for name in HOSTILE[1:]})
    frame["plain"] = rng.normal(size=120)
    frame["target"] = np.where(frame["plain"] > 0, HOSTILE[0], "ok")
    path = tmp_path_factory.mktemp("table") / "hostile.csv"
    frame.to_csv(path, index=False)
    _, result = run_report(tmp_path_factory.mktemp("out"), dataset=f"csv:{path}", label="target", epochs=3,
                           background=20, explain_rows=6)
    return result, rendered_again(result)


def test_hostile_column_and_class_names_in_a_table_report_come_out_as_text(hostile_table_run):
    result, fetcher = hostile_table_run
    text = " ".join(pdf_text(result["pdf"]).split())
    for name in HOSTILE:
        assert " ".join(name.split()) in text, name
    for heading in ("Permutation feature importance", "Partial dependence and ICE", "LIME", "Method agreement"):
        assert heading in text
    assert fetcher.refused == []
    assert all(only_figures_and_attachments(url, result["run_dir"]) for url in fetcher.requested)


_OPENED: list[str] | None = None  # set while a test records the files Python opens


def _record_opens(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, bytes)):
        _OPENED.append(args[0].decode() if isinstance(args[0], bytes) else args[0])


def test_rendering_opens_no_file_outside_the_run_except_code_and_templates(tmp_path):
    """An audit hook records every file Python opens while the hostile-content report renders."""
    import sys
    import sysconfig
    from pathlib import Path

    from PIL import Image

    from tasks.report.render import TEMPLATES_DIR, render_pdf

    global _OPENED
    run_dir = tmp_path / "run"
    (run_dir / "figures").mkdir(parents=True)
    Image.new("RGB", (8, 8), (0, 128, 255)).save(run_dir / "figures" / "plot.png")
    (tmp_path / "secret.png").write_bytes((run_dir / "figures" / "plot.png").read_bytes())
    context = {"name": HOSTILE[0], "figure": "figures/plot.png", "escape": "../secret.png",
               "css": "x{background:url(file:///etc/hostname)}"}
    sys.addaudithook(_record_opens)  # hooks cannot be removed; it records only while _OPENED is a list
    _OPENED = []
    try:
        render_pdf("audit_probe.html.j2", context, run_dir, run_dir / "probe.pdf")
    finally:
        opened, _OPENED = _OPENED, None
    allowed = [run_dir.resolve(), TEMPLATES_DIR, Path(sysconfig.get_paths()["purelib"]).resolve(),
               Path(sysconfig.get_paths()["stdlib"]).resolve(), Path(sys.prefix).resolve(),
               Path("/proc/self").resolve()]  # the process's own umask, for the PDF's mode (tasks/run/artifacts.py)
    outside = [p for p in opened if not any(Path(p).resolve().is_relative_to(root) for root in allowed)]
    assert outside == []
    assert any(Path(p).resolve() == (run_dir / "figures" / "plot.png").resolve() for p in opened)
    assert not any("secret" in p or p.startswith("/etc/") for p in opened)


def test_numbers_that_round_to_zero_print_without_a_minus_sign():
    assert fixed(-0.00001, 4) == "0.0000" and fixed(-0.00006, 4) == "-0.0001" and fixed(0.12345, 3) == "0.123"


def test_names_that_look_like_mathtext_are_drawn_as_they_are(tmp_path):
    """An invalid formula in a feature or class name once crashed the report step after the whole run."""
    import numpy as np
    from PIL import Image as PILImage

    from tasks.report import figures, validator_figures

    names = [r"$\frac{a}{", "$x^2$ income", "plain"]
    path = figures.global_importance_bars(np.ones((2, 3)), names, [r"$\sqrt{", "$b$"], tmp_path / "bars.png")
    assert PILImage.open(path).size[0] > 0
    per_group = pd.DataFrame({"attribute": ["$a$"] * 2, "group": [r"$\frac{", "b"], "class_name": ["$c$"] * 2,
                              "support": [10, 12], "selection_rate": [0.2, 0.4], "tpr": [0.5, 0.6], "fpr": [0.1, 0.2]})
    assert validator_figures.fairness_bars(per_group, tmp_path / "fair.png").is_file()


@given(st.lists(st.text(min_size=1, max_size=60), min_size=1, max_size=12, unique=True),
       st.integers(min_value=4, max_value=40))
@settings(max_examples=200, deadline=None)
def test_figure_labels_stay_as_distinct_as_the_names(names, width):
    """Bars and titles take one label per name: equal labels would merge two features' bars into one."""
    from tasks.report.figures import short_labels

    labels = short_labels(names, width)
    assert len(set(labels)) == len(names)
    assert all(label == name for label, name in zip(labels, names) if len(name) <= width and names.count(name) == 1
               and labels.count(label) == 1)
    assert all(len(label) <= width + len(f" [{len(names)}]") for label in labels)


def test_features_cut_to_the_same_label_keep_their_own_bars(tmp_path):
    """Two long feature names that share their first 40 characters: two bars, each with its own value."""
    import matplotlib.pyplot as plt

    from tasks.report import figures

    names = ["applicant income reported on the form, in dollars", "applicant income reported on the form, in euros"]
    table = pd.DataFrame({"name": names, "importance_mean": [0.3, 0.1], "ci_low": [0.2, 0.0], "ci_high": [0.4, 0.2]})
    drawn = {}
    original = plt.Axes.barh

    def record(ax, labels, widths, *args, **kwargs):
        drawn.update(zip(labels, widths))
        return original(ax, labels, widths, *args, **kwargs)

    plt.Axes.barh = record
    try:
        figures.importance_bars(table, tmp_path / "bars.png", "permutation importance")
    finally:
        plt.Axes.barh = original
    assert len(drawn) == 2 and sorted(drawn.values()) == [0.1, 0.3]
    assert all(label.endswith(("dollars", "euros")) for label in drawn)


def test_names_the_font_cannot_draw_are_spelled_out_in_limitations():
    """Names in scripts the figures' font has no glyphs for come out as boxes: Limitations names them in escapes
    (an auditor can still read them), one line per kind of name; spaces and invisible characters are not boxes."""
    from fontTools.ttLib import TTFont
    from matplotlib import font_manager

    from tasks.report import figures
    from tasks.report.build import undrawn_names

    family, charset = figures.font()
    assert family == "DejaVu Sans"  # the font the report's CSS names first
    with TTFont(font_manager.findfont("DejaVu Sans")) as face:  # the font's own table, read here
        assert 0x6536 not in face.getBestCmap() and 0x0065 in face.getBestCmap()
    assert figures.undrawable("income 收入\u200b ｆ é 收") == "收入ｆ"
    lines = undrawn_names({"class": ["yes", "收入"], "feature": ["age", "ｆｅｅ", "收入"],
                           "protected group": ["a"]})
    assert lines == [
        "1 class name(s) use characters that the report's font (DejaVu Sans) cannot draw (U+6536, U+5165): figures "
        "(and text, unless another installed font has them) show boxes in their place. Spelled out: '\\u6536\\u5165'.",
        "2 feature name(s) use characters that the report's font (DejaVu Sans) cannot draw (U+6536, U+5165, U+FF46, "
        "U+FF45): figures (and text, unless another installed font has them) show boxes in their place. Spelled out: "
        "'\\u6536\\u5165', '\\uff46\\uff45\\uff45'."]
