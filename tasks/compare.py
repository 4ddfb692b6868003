"""What changed since the last report: the same dataset's previous run against this one.

The previous run is `--compare RUN_DIR`, or else the newest finished run of the same dataset
spec under the same output directory. It must pass `verify` (a tampered run is not compared
with). Compared: validation metrics per class, permutation-importance ranks of the top
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
import pyarrow as pa
from scipy.stats import ks_2samp

from tasks.artifacts import MANIFEST_NAME, sha256_file, write_json_atomic, write_parquet_atomic
from tasks.errors import InputError
from tasks.load import read_split
from tasks.verify import verify_run

TOP_FEATURES = 10
SHIFT_THRESHOLD = 0.1  # a KS statistic above this marks a feature (or channel) as shifted


def previous_run(out: Path, dataset: str, current: Path) -> Path | None:
    """The newest finished, intact run of `dataset` under `out`, other than `current` (newest checked first)."""
    for run_dir in sorted(Path(out).iterdir(), key=lambda p: p.name, reverse=True):
        manifest = run_dir / MANIFEST_NAME
        if run_dir.resolve() == Path(current).resolve() or not manifest.is_file():
            continue
        try:
            recorded = json.loads(manifest.read_text())
        except ValueError:
            continue
        if recorded.get("parameters", {}).get("dataset") == dataset and not verify_run(run_dir):
            return run_dir
    return None


def check_previous_run(run_dir: Path) -> Path:
    """A run named with --compare: it must exist, be finished and pass verification."""
    run_dir = Path(run_dir).expanduser().resolve()
    if not (run_dir / MANIFEST_NAME).is_file():
        raise InputError(f"--compare {run_dir}: not a finished run directory (no {MANIFEST_NAME})")
    problems = verify_run(run_dir)
    if problems:
        raise InputError(f"--compare {run_dir} fails verification ({problems[0]}); it cannot be compared with")
    return run_dir


def _final_per_class(run_dir: Path) -> pd.DataFrame:
    table = pd.read_parquet(run_dir / "training" / "metrics_per_class.parquet")
    table = table[(table["split"] == "validation") & (table["epoch"] == table["epoch"].max())]
    return table.set_index("class_name")[["precision", "recall", "f1", "support"]]


def _final_overall(run_dir: Path) -> pd.Series:
    table = pd.read_parquet(run_dir / "training" / "metrics.parquet")
    table = table[table["split"] == "validation"]
    return table[table["epoch"] == table["epoch"].max()].iloc[0][["accuracy", "precision_macro", "recall_macro",
                                                                   "f1_macro"]]


def _importance_ranks(run_dir: Path) -> pd.Series:
    table = pd.read_parquet(run_dir / "analysis" / "permutation_importance.parquet")
    table = table[table["kind"].isin(["feature", "region"])].sort_values("importance_mean", ascending=False)
    return pd.Series(np.arange(1, len(table) + 1), index=table["name"].to_numpy())


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
        return {"previous": None}
    previous = Path(previous)
    out = run_dir / "comparison"
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

    train_now, train_before = read_split(run_dir / "data" / "train.parquet"), read_split(previous / "data" / "train.parquet")
    shift = data_shift(train_now, train_before)
    preds_now = pd.read_parquet(run_dir / "explain" / "predictions.parquet")
    preds_before = pd.read_parquet(previous / "explain" / "predictions.parquet")
    joined = preds_now.merge(preds_before, on="source_id", suffixes=("", "_previous"))
    changed = joined[joined["predicted"] != joined["predicted_previous"]]

    files = {name: write_parquet_atomic(out / f"{name}.parquet", pa.Table.from_pandas(frame, preserve_index=False))
             for name, frame in (("metrics", metrics), ("importance", importance), ("data_shift", shift),
                                 ("predictions", changed))}
    summary = {
        "previous": previous.name,
        "previous_sha256": {"manifest": sha256_file(previous / MANIFEST_NAME)},
        "overall": {m: {"now": float(overall_now[m]), "previous": float(overall_before[m]),
                        "delta": float(overall_now[m] - overall_before[m])} for m in overall_now.index},
        "classes_only_now": [c for c in now_classes.index if c not in before_classes.index],
        "classes_only_previous": [c for c in before_classes.index if c not in now_classes.index],
        "shared_rows": len(joined), "changed_predictions": len(changed),
        "n_shifted": int(shift["shifted"].sum()),
    }
    write_json_atomic(out / "summary.json", summary)
    return {**summary, "files": {name: str(path) for name, path in files.items()}}
