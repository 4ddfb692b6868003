import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.run.artifacts import sha256_file
from tasks.run.errors import InputError
from tasks.run.formats import read_split
from tasks.steps.load import load_data


def test_splits_are_stratified_seeded_parquet_with_documented_schema(imagefolder_dir, tmp_path):
    result = load_data(f"imagefolder:{imagefolder_dir}", tmp_path / "out", seed=3, val_fraction=0.25)
    train_path, val_path = result["files"]["train"]["path"], result["files"]["validation"]["path"]
    schema = pq.read_schema(train_path)
    assert schema.field("source_id").type == pa.string()
    assert schema.field("label").type == pa.int64()
    assert schema.field("inputs").type == pa.list_(pa.float32(), 3 * 32 * 32)
    assert json.loads(schema.metadata[b"accountability.class_names"]) == ["cats", "dogs", "owls"]
    assert json.loads(schema.metadata[b"accountability.input_shape"]) == [3, 32, 32]
    assert result["files"]["train"]["sha256"] == sha256_file(train_path)
    assert result["class_counts"]["train"] == [9, 9, 9]
    assert result["class_counts"]["validation"] == [3, 3, 3]

    train, val = read_split(train_path), read_split(val_path)
    assert not set(train.source_ids) & set(val.source_ids)
    assert train.inputs.shape == (27, 3, 32, 32) and train.inputs.flags.writeable

    again = load_data(f"imagefolder:{imagefolder_dir}", tmp_path / "out", seed=3, val_fraction=0.25)
    assert again["run_dir"] != result["run_dir"]  # every run gets its own directory
    assert read_split(again["files"]["validation"]["path"]).source_ids == val.source_ids  # same seed, same split


def test_round_trip_preserves_pixels(cifar_dir, tmp_path):
    result = load_data(f"cifar10:{cifar_dir}", tmp_path, seed=0, val_fraction=0.5)
    split = read_split(result["files"]["train"]["path"])
    from tasks.data.sources import load_dataset

    data = load_dataset(f"cifar10:{cifar_dir}")
    index = data.source_ids.index(split.source_ids[0])
    np.testing.assert_array_equal(split.inputs[0], data.inputs[index])
    assert split.labels[0] == data.labels[index]


def test_bad_input_creates_no_run_directory(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(InputError):
        load_data("imagefolder:/does/not/exist", out, seed=0, val_fraction=0.2)
    assert not out.exists() or not any(out.iterdir())


def test_read_split_refuses_a_foreign_or_corrupt_file(tmp_path):
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), foreign)
    with pytest.raises(InputError, match="not an accountability split"):
        read_split(foreign)
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(foreign.read_bytes()[:-20])
    with pytest.raises(InputError, match="not a readable Parquet file"):
        read_split(corrupt)


def test_a_resume_whose_run_json_names_other_data_is_refused(imagefolder_dir, tmp_path):
    from tests.conftest import write_imagefolder

    first = load_data(f"imagefolder:{imagefolder_dir}", tmp_path / "out", seed=3, val_fraction=0.25)
    run_dir = Path(first["run_dir"])
    again = load_data(f"imagefolder:{imagefolder_dir}", tmp_path / "out", seed=3, val_fraction=0.25, resume=run_dir)
    assert again["files"] == first["files"]  # the same data: the same files, byte for byte
    other = write_imagefolder(tmp_path / "other", {"cats": 12, "dogs": 12, "owls": 12}, seed=9)
    before = (run_dir / "data" / "train.parquet").read_bytes()
    with pytest.raises(InputError, match="differs from the run's own train.parquet"):
        load_data(f"imagefolder:{other}", tmp_path / "out", seed=3, val_fraction=0.25, resume=run_dir)
    assert (run_dir / "data" / "train.parquet").read_bytes() == before  # nothing overwritten
