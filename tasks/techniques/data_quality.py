"""Data quality: what the data is before any judgement rests on it.

Missing values (the loader refuses NaN and infinity, so the section says none reached the model), duplicate rows
within each split and across them (for a model trained here, a validation row identical to a training row is
leakage: check ``data.leakage``), constant columns, validation rows outside the training range, the labels'
meanings and counts (and, for binary models, the favourable outcome from the model card), and each protected
group's base rates.

File ``analysis/data_quality.parquet``: one row per feature (tables) or channel (images): name, train_min,
train_max, constant, outside_share (validation rows outside the training range).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from tasks.model.run_model import load_run_model
from tasks.report.sections import ReportData, file_of
from tasks.run import layout
from tasks.run.checks import MODERATE, Check
from tasks.run.formats import read_split, write_frame
from tasks.steps.model_card import read_card_record, stated

SECTION_DATA = "2. Design and data"


def row_digests(inputs: np.ndarray) -> list[str]:
    """A digest of each row's values (exact duplicates share one)."""
    flat = np.ascontiguousarray(inputs.reshape(len(inputs), -1))
    return [hashlib.sha256(row.tobytes()).hexdigest() for row in flat]


def duplicates(train: np.ndarray, val: np.ndarray) -> dict[str, int]:
    """Rows repeated within the training split, within the validation split, and validation rows also in training."""
    a, b = row_digests(train), row_digests(val)
    return {"within_train": len(a) - len(set(a)), "within_validation": len(b) - len(set(b)),
            "across": sum(d in set(a) for d in b)}


def column_ranges(train: np.ndarray, val: np.ndarray, names: list[str]) -> pd.DataFrame:
    """Per column (tables) or channel (images): the training range, whether it is constant, and the share of
    validation rows with a value outside the training range."""
    if train.ndim == 4:  # (n, C, H, W): per channel
        train, val = train.transpose(0, 2, 3, 1).reshape(-1, train.shape[1]), val.transpose(0, 2, 3, 1).reshape(
            -1, val.shape[1])
    low, high = train.min(0), train.max(0)
    outside = ((val < low) | (val > high)).mean(0)
    return pd.DataFrame({"name": names, "train_min": low.astype(float), "train_max": high.astype(float),
                         "constant": low == high, "outside_share": outside.astype(float)})


def assess_data_quality(run_dir: str, files: dict[str, str], seed: int) -> dict:
    """The data-quality facts of the run's two splits, and the leakage check for a model trained here."""
    train, val = read_split(files["train"]), read_split(files["validation"])
    supplied = load_run_model(files["model"]).record["source"] == "supplied"
    names = train.feature_names if train.modality == "table" else [f"channel {c}" for c in range(train.inputs.shape[1])]
    ranges = column_ranges(train.inputs, val.inputs, names)
    repeated = duplicates(train.inputs, val.inputs)
    favourable = stated(read_card_record(files["card_record"]), "favourable_outcome")
    labels = np.concatenate([train.labels, val.labels])
    groups = {a: train.groups[a] + val.groups[a] for a in train.groups}
    base_rates = []  # per protected group: its rows and the share of them in each class
    for attribute, values in groups.items():
        values = np.asarray(values, dtype=object)
        for group in sorted(set(values)):
            members = values == group
            shares = {name: float((labels[members] == k).mean()) for k, name in enumerate(train.class_names)}
            base_rates.append({"attribute": attribute, "group": group, "rows": int(members.sum()), **shares})
    checks = []
    if not supplied:  # the splits were made here: an overlap means the validation is not held out
        checks.append(Check("data.leakage", "Data quality", "validation rows identical to a training row",
                            repeated["across"], 0, "at most", SECTION_DATA,
                            f"{repeated['across']} validation rows are identical to training rows: the validation "
                            "metrics are partly in-sample.", unit="count", severity=MODERATE))
    return {"files": {"data_quality": write_frame(layout.path(run_dir, "data_quality"), ranges)},
            "checks": [c.to_json() for c in checks], "duplicates": repeated, "supplied": supplied,
            "favourable": favourable, "base_rates": base_rates,
            "classes": [{"name": n, "train": int((train.labels == k).sum()), "validation": int((val.labels == k).sum())}
                        for k, n in enumerate(train.class_names)],
            "n_constant": int(ranges["constant"].sum()), "max_outside": float(ranges["outside_share"].max())}


def data_quality_section(data: ReportData, result: dict) -> dict:
    ranges = pd.read_parquet(file_of(result, "data_quality"))
    shown = ranges[ranges["constant"] | (ranges["outside_share"] > 0)].sort_values("outside_share", ascending=False)
    return {**{k: v for k, v in result.items() if k not in ("files", "checks")}, "columns": len(ranges),
            "flagged": shown.head(12).to_dict("records"), "more": max(0, len(shown) - 12)}
