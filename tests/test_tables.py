"""Table sources: breast-cancer, csv:FILE and parquet:FILE with --label; and the reference MLP."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tasks.data.sources import load_dataset
from tasks.run.errors import InputError
from tasks.run.formats import read_split
from tasks.steps.load import load_data
from tasks.model.reference import load_weights
from tasks.steps.train import reference_model, train_model


def write_table(path, frame: pd.DataFrame):
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    return path


def small_frame(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"income": rng.normal(50, 10, n), "age": rng.integers(18, 90, n),
                         "defaulted": np.where(np.arange(n) % 2, "yes", "no")})


def test_breast_cancer_is_a_table_with_named_features():
    data = load_dataset("breast-cancer")
    assert data.modality == "table" and data.inputs.shape == (569, 30)
    assert data.class_names == ["malignant", "benign"] and data.feature_names[0] == "mean radius"


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_csv_or_parquet_file_with_a_label_column(tmp_path, suffix):
    path = write_table(tmp_path / f"loans{suffix}", small_frame())
    data = load_dataset(f"{suffix[1:]}:{path}", label="defaulted")
    assert data.feature_names == ["income", "age"] and data.class_names == ["no", "yes"]
    np.testing.assert_array_equal(data.labels[:4], [0, 1, 0, 1])
    assert data.source_ids[3] == f"loans{suffix}:row 3"


def test_numeric_labels_are_ordered_by_value(tmp_path):
    frame = small_frame().assign(defaulted=[10, 2, 2, 10] * 10)
    data = load_dataset(f"csv:{write_table(tmp_path / 'x.csv', frame)}", label="defaulted")
    assert data.class_names == ["2", "10"]


@pytest.mark.parametrize("change, message", [
    (lambda f: f.drop(columns="defaulted"), "no label column 'defaulted'; the columns are 'income', 'age'"),
    (lambda f: f.assign(region="north"), "not numeric: 'region"),
    (lambda f: f.assign(income=[np.nan] + [1.0] * 39), "missing values in 'income' \\(1 rows\\)"),
    (lambda f: f.assign(age=[np.inf] * 40), "NaN or infinite values in 'age'"),
    (lambda f: f.assign(age=[3e38] + [1.0] * 39), r"values beyond ±1e\+15 in 'age' \(largest 3e\+38\); .* rescale"),
    (lambda f: f.assign(income=[-2e15] + [1.0] * 39), r"values beyond ±1e\+15 in 'income' \(largest 2e\+15\)"),
    (lambda f: f.assign(defaulted="yes"), "single class"),
    (lambda f: f.assign(defaulted=np.arange(40) * 0.5), "40 distinct values"),
    (lambda f: f[["defaulted"]], "no feature columns"),
    (lambda f: f.iloc[:0], "is empty"),
])
def test_bad_tables_are_refused_with_the_problem_named(tmp_path, change, message):
    path = write_table(tmp_path / "bad.parquet", change(small_frame()))
    with pytest.raises(InputError, match=message):
        load_dataset(f"parquet:{path}", label="defaulted")


def test_corrupt_files_and_missing_label_option(tmp_path):
    good = write_table(tmp_path / "good.parquet", small_frame())
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(InputError, match="truncated.parquet: not a readable Parquet file"):
        load_dataset(f"parquet:{truncated}", label="defaulted")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b,label\n1,2,x\n3,4\n")
    with pytest.raises(InputError, match="ragged.csv: not a readable CSV file"):
        load_dataset(f"csv:{ragged}", label="label")
    with pytest.raises(InputError, match="needs --label COLUMN"):
        load_dataset(f"parquet:{good}")
    with pytest.raises(InputError, match="--label is for csv:FILE and parquet:FILE"):
        load_dataset("digits", label="defaulted")


def test_the_mlp_standardises_in_its_first_layer_and_round_trips(tmp_path):
    loaded = load_data("breast-cancer", tmp_path, seed=0, val_fraction=0.2)
    train = read_split(loaded["files"]["train"]["path"])
    assert train.modality == "table" and train.feature_names[0] == "mean radius"
    model, config = reference_model(train)
    with torch.no_grad():
        z = model[0](torch.from_numpy(train.inputs)).double().numpy()
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-3)
    trained = train_model(loaded["files"]["train"]["path"], loaded["files"]["validation"]["path"], loaded["run_dir"], 2, 64, 0)
    assert trained["final_validation"]["accuracy"] > 0.85
    model, config, _ = load_weights(trained["files"]["weights"]["path"])
    assert config.in_features == 30 and config.hidden == 64
    assert not model[0].weight.requires_grad


def test_a_class_name_with_nothing_visible_is_refused(tmp_path):
    frame = small_frame().assign(defaulted=["\xad", "ok"] * 20)
    with pytest.raises(InputError, match="no visible character"):
        load_dataset(f"csv:{write_table(tmp_path / 'x.csv', frame)}", label="defaulted")


@pytest.mark.parametrize("change, message", [
    (lambda f: f.assign(defaulted=np.where(np.arange(40) % 2, "yes", "yes\u200b")),
     r"class names 'yes' and 'yes\\u200b' read the same in a report"),
    (lambda f: f.rename(columns={"age": "ｉｎｃｏｍｅ"}), "feature names 'income' and 'ｉｎｃｏｍｅ' read the same"),
    (lambda f: f.rename(columns={"age": "in  come", "income": "in come"}), "feature names 'in come' and 'in  come'"),
    (lambda f: f.rename(columns={"age": "age\u202e01"}), r"feature name 'age\\u202e01' holds a bidirectional control"),
    (lambda f: f.assign(defaulted=np.where(np.arange(40) % 2, "\u2067no", "yes")), r"class name '\\u2067no' holds"),
])
def test_names_that_read_the_same_are_refused(tmp_path, change, message):
    """Two classes (or features) a reader cannot tell apart in the report: zero-width, full-width, doubled spaces."""
    with pytest.raises(InputError, match=message):
        load_dataset(f"csv:{write_table(tmp_path / 'x.csv', change(small_frame()))}", label="defaulted")


def test_text_that_is_not_utf8_is_refused_in_one_line(tmp_path):
    header = tmp_path / "header.csv"
    header.write_bytes(b"inc\xe9me,age,defaulted\n" + b"".join(b"%d,%d,%s\n" % (i, i, b"ab"[i % 2:i % 2 + 1])
                                                                for i in range(10)))
    with pytest.raises(InputError, match=r"header.csv: the header is not UTF-8 text \(byte b'\\xe9'"):
        load_dataset(f"csv:{header}", label="defaulted")
    values = tmp_path / "values.csv"
    values.write_bytes(b"income,age,defaulted\n" + b"".join(b"%d,%d,%s\n" % (i, i, [b"caf\xe9", b"b"][i % 2])
                                                            for i in range(10)))
    with pytest.raises(InputError, match="label column 'defaulted' is not UTF-8 text"):
        load_dataset(f"csv:{values}", label="defaulted")


def test_a_label_of_minus_zero_is_class_0(tmp_path):
    """A float label column with one -0.0 among forty 0.0 gave two classes both named "0" (then "classes ['0']
    have fewer than 2 rows" for a class of 41 rows)."""
    path = tmp_path / "t.csv"
    pd.DataFrame({"x": np.arange(81.0), "y": [0.0] * 40 + [-0.0] + [1.0] * 40}).to_csv(path, index=False)
    data = load_dataset(f"csv:{path}", "y")
    assert data.class_names == ["0", "1"] and np.bincount(data.labels).tolist() == [41, 40]
