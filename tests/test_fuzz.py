"""Property-based tests (hypothesis): mutated Parquet/CSV files and random class names end in a correct
result or one clear InputError, never another exception, a hang or a partial output."""

import io
import unicodedata

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pypdf import PdfReader

from tasks.data.sources import load_dataset
from tasks.run.errors import InputError
from tasks.steps.load import load_data
from tasks.report.render import RunFilesFetcher, render_pdf

FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def valid_frame(n: int = 24) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"a": rng.normal(size=n), "b": rng.integers(0, 9, n), "label": ["x", "y"] * (n // 2)})


def parquet_bytes() -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(valid_frame(), preserve_index=False), buffer)
    return buffer.getvalue()


PARQUET = parquet_bytes()
CSV = valid_frame().to_csv(index=False)


def load_or_clear_error(spec: str, label: str = "label"):
    """The property: a Dataset that is fit for training, or an InputError naming the file."""
    try:
        data = load_dataset(spec, label)
    except InputError as exc:
        assert spec.split(":", 1)[1] in str(exc) or "dataset" in str(exc), str(exc)
        return None
    assert np.isfinite(data.inputs).all() and data.inputs.shape[0] == len(data.labels) > 0
    assert 0 <= data.labels.min() and data.labels.max() < len(data.class_names)
    return data


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, len(PARQUET) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       cut=st.one_of(st.none(), st.integers(0, len(PARQUET))))
def test_mutated_parquet_loads_correctly_or_fails_clearly(tmp_path, edits, cut):
    data = bytearray(PARQUET)
    for position, value in edits:
        data[position] = value
    path = tmp_path / "mutated.parquet"
    path.write_bytes(bytes(data[:cut] if cut is not None else data))
    load_or_clear_error(f"parquet:{path}")


@FUZZ
@given(position=st.integers(0, len(CSV)), insert=st.text(max_size=12), drop=st.integers(0, 30))
def test_mutated_csv_loads_correctly_or_fails_clearly(tmp_path, position, insert, drop):
    lines = CSV.splitlines(keepends=True)
    text = CSV[:position] + insert + CSV[position:]
    if drop < len(lines):
        text = "".join(line for i, line in enumerate(text.splitlines(keepends=True)) if i != drop)
    path = tmp_path / "mutated.csv"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    load_or_clear_error(f"csv:{path}")


NAMES = st.text(st.characters(min_codepoint=32, max_codepoint=0x17F, exclude_categories=("Cc", "Cs")),
                min_size=1, max_size=24)


@FUZZ
@given(names=st.lists(NAMES, min_size=2, max_size=3, unique=True))
def test_random_class_names_survive_loading_and_rendering_as_text(tmp_path, names):
    frame = pd.DataFrame({"feature": np.arange(30, dtype=float), "label": [names[i % len(names)] for i in range(30)]})
    path = tmp_path / "named.csv"
    frame.to_csv(path, index=False)
    data = load_or_clear_error(f"csv:{path}")
    if data is None:
        return
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    fetcher = RunFilesFetcher(run_dir)
    for name in data.class_names:
        pdf = render_pdf("audit_probe.html.j2", {"name": name, "figure": "none.png", "escape": "../x.png",
                                                 "css": name}, run_dir, run_dir / "probe.pdf", fetcher=fetcher)
        text = " ".join(PdfReader(pdf).pages[0].extract_text().split())
        shown = "".join(ch for ch in name if unicodedata.category(ch) != "Cf")  # soft hyphens etc. print nothing
        assert " ".join(shown.split()) in text
    assert all(url.startswith(run_dir.as_uri()) for url in set(fetcher.requested) - set(fetcher.refused))


def test_a_failed_load_leaves_no_run_directory_and_earlier_runs_untouched(tmp_path):
    out = tmp_path / "reports"
    good = tmp_path / "good.csv"
    valid_frame().to_csv(good, index=False)
    first = load_data(f"csv:{good}", out, seed=0, val_fraction=0.25, label="label")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = tmp_path / "bad.csv"
    valid_frame().assign(a=["1", "two"] * 12).to_csv(bad, index=False)
    with pytest.raises(InputError, match="not numeric: 'a'"):
        load_data(f"csv:{bad}", out, seed=0, val_fraction=0.25, label="label")
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before and [d.name for d in out.iterdir()] == [first["run_dir"].rsplit("/", 1)[1]]
