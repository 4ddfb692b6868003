"""What changed since the last report: the same dataset's previous run against this one.

The previous run is `--compare RUN_DIR`, or else the newest finished run of the same dataset
spec under the same output directory (tasks/run/history.py finds and checks it). Compared: validation metrics per class, permutation-importance ranks of the top
features, the input data's distribution (per feature, or per channel for images: mean, standard
deviation and the two-sample Kolmogorov-Smirnov statistic) and the class mix, and the predictions
on the validation rows both runs share (matched by source id).

Files (in ``comparison/``): ``metrics.parquet``, ``importance.parquet``, ``data_shift.parquet``,
``predictions.parquet`` (only the rows whose prediction changed), and ``summary.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

from tasks.run import layout
from tasks.run.artifacts import sha256_file, write_json_atomic
from tasks.run.checks import SECTION_MONITORING, Check
from tasks.run.formats import file_ref, read_split, write_frame

TOP_FEATURES = 10
SHIFT_THRESHOLD = 0.1  # a KS statistic above this marks a feature (or channel) as shifted


def _final_per_class(run_dir: Path) -> pd.DataFrame:
    table = pd.read_parquet(layout.path(run_dir, "metrics_per_class"))
    table = table[(table["split"] == "validation") & (table["epoch"] == table["epoch"].max())]
    return table.set_index("class_name")[["precision", "recall", "f1", "support"]]


def _final_overall(run_dir: Path) -> pd.Series:
    table = pd.read_parquet(layout.path(run_dir, "metrics"))
    table = table[table["split"] == "validation"]
    return table[table["epoch"] == table["epoch"].max()].iloc[0][["accuracy", "precision_macro", "recall_macro",
                                                                   "f1_macro"]]


def _importance_ranks(run_dir: Path) -> pd.Series:
    table = pd.read_parquet(layout.path(run_dir, "permutation_importance"))
    table = table[table["kind"].isin(["feature", "region"])].sort_values("importance_mean", ascending=False)
    return pd.Series(np.arange(1, len(table) + 1), index=table["name"].to_numpy())


def _model_identity(run_dir: Path) -> dict:
    """Which model a run validated: its source (trained or supplied), format and file SHA-256."""
    record_path = layout.path(run_dir, "model")
    if not record_path.is_file():  # a run made before model records: its trained weights
        return {"source": "trained", "format": "safetensors", "sha256": sha256_file(layout.path(run_dir, "weights"))}
    record = json.loads(record_path.read_text())
    return {"source": record["source"], "format": record["format"], "sha256": record["sha256"]}


def data_shift(current, previous) -> pd.DataFrame:
    """Per feature (tables) or channel (images): means, standard deviations and the KS statistic."""
    if current.modality == "table":
        names = [n for n in current.feature_names if n in previous.feature_names]
        columns = [(n, current.inputs[:, current.feature_names.index(n)],
                    previous.inputs[:, previous.feature_names.index(n)]) for n in names]
    else:
        channels = min(current.inputs.shape[1], previous.inputs.shape[1])
        columns = [(f"channel {c}", current.inputs[:, c].reshape(-1), previous.inputs[:, c].reshape(-1))
                   for c in range(channels)]
    rows = []
    for name, now, before in columns:
        ks = ks_2samp(now, before).statistic
        rows.append({"name": name, "mean": float(now.mean()), "previous_mean": float(before.mean()),
                     "std": float(now.std()), "previous_std": float(before.std()), "ks": float(ks),
                     "shifted": bool(ks > SHIFT_THRESHOLD)})
    return pd.DataFrame(rows)


def compare_runs(run_dir: Path, previous: Path | None) -> dict:
    """Write the comparison files for `run_dir` against `previous`; {"previous": None} when there is none."""
    run_dir = Path(run_dir)
    if previous is None:
        return {"previous": None, "checks": []}
    previous = Path(previous)
    now_classes, before_classes = _final_per_class(run_dir), _final_per_class(previous)
    common = [c for c in now_classes.index if c in before_classes.index]
    metrics = pd.DataFrame({
        "class_name": common,
        **{f"{m}": now_classes.loc[common, m].to_numpy() for m in ("precision", "recall", "f1")},
        **{f"previous_{m}": before_classes.loc[common, m].to_numpy() for m in ("precision", "recall", "f1")},
    })
    for m in ("precision", "recall", "f1"):
        metrics[f"delta_{m}"] = metrics[m] - metrics[f"previous_{m}"]
    overall_now, overall_before = _final_overall(run_dir), _final_overall(previous)

    ranks_now, ranks_before = _importance_ranks(run_dir), _importance_ranks(previous)
    top = list(dict.fromkeys(list(ranks_now.index[:TOP_FEATURES]) + list(ranks_before.index[:TOP_FEATURES])))
    importance = pd.DataFrame({"name": top, "rank": [int(ranks_now.get(n, -1)) for n in top],
                               "previous_rank": [int(ranks_before.get(n, -1)) for n in top]})
    importance["rank_change"] = importance["previous_rank"] - importance["rank"]

    shift = data_shift(read_split(layout.path(run_dir, "train")), read_split(layout.path(previous, "train")))
    preds_now = pd.read_parquet(layout.path(run_dir, "predictions"))
    preds_before = pd.read_parquet(layout.path(previous, "predictions"))
    joined = preds_now.merge(preds_before, on="source_id", suffixes=("", "_previous"))
    changed = joined[joined["predicted"] != joined["predicted_previous"]]

    files = {name: write_frame(layout.path(run_dir, f"comparison_{name}"), frame)
             for name, frame in (("metrics", metrics), ("importance", importance), ("data_shift", shift),
                                 ("predictions", changed))}
    summary = {
        "previous": previous.name,
        "model": {"now": _model_identity(run_dir), "previous": _model_identity(previous)},
        "previous_sha256": {"manifest": sha256_file(layout.path(previous, "manifest"))},
        "overall": {m: {"now": float(overall_now[m]), "previous": float(overall_before[m]),
                        "delta": float(overall_now[m] - overall_before[m])} for m in overall_now.index},
        "classes_only_now": [c for c in now_classes.index if c not in before_classes.index],
        "classes_only_previous": [c for c in before_classes.index if c not in now_classes.index],
        "shared_rows": len(joined), "changed_predictions": len(changed),
        "n_shifted": int(shift["shifted"].sum()),
    }
    summary["model"]["changed"] = summary["model"]["now"]["sha256"] != summary["model"]["previous"]["sha256"]
    files["summary"] = file_ref(write_json_atomic(layout.path(run_dir, "comparison_summary"), summary))
    check = Check("comparison.data-shift", "Input data", f"features or channels shifted since the previous run (KS above {SHIFT_THRESHOLD})",
                  summary["n_shifted"], 0, "at most", SECTION_MONITORING,
                  f"The input data shifted since the previous run in {summary['n_shifted']} feature(s) or channel(s) "
                  "(Kolmogorov-Smirnov statistic above the threshold).", unit="count")
    return {**summary, "files": files, "checks": [check.to_json()]}
