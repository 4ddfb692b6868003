"""Permutation feature importance: how much validation accuracy drops when one feature group is shuffled.

File ``analysis/permutation_importance.parquet``, one row per group: kind (feature | region |
channel), name, importance_mean, importance_std, ci_low, ci_high (95% t-interval of the mean
over the repeats), n_repeats, n_rows, metric (``accuracy``), baseline (unshuffled accuracy).
A group's values are shuffled jointly across rows (a region moves as one piece), the model's
other inputs kept; for tables each group is one column, as scikit-learn's permutation_importance.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
from scipy import stats

from tasks.model.run_model import load_run_model
from tasks.report import figures
from tasks.report.sections import TOP_TABLE_ROWS, ReportData, file_of
from tasks.run import layout
from tasks.run.formats import read_split, write_frame
from tasks.run.progress import progress_bar
from tasks.techniques.groups import REGION_GRID, FeatureGroups, feature_columns, image_channels, image_regions

REPEATS = {"table": 10, "image": 5}  # shuffles per group at least (images: each shuffle is a pass over the rows)
MAX_ROWS = {"table": 5000, "image": 200}  # validation rows used (a seeded sample when there are more)
# On few rows one shuffle moves the accuracy in coarse steps (1/n) and the interval is wide: tables get more
# shuffles, about 2,000 shuffled rows per group (cheap), at most 50. Images keep theirs: each shuffle is a forward
# pass, and 50 shuffles of 8 images took a resnet18 161 s instead of 16 (its interval shows the uncertainty).
SHUFFLED_ROWS = {"table": 2000}
MAX_REPEATS = 50
METRIC = "accuracy"


def choose_repeats(modality: str, n_rows: int) -> tuple[int, str | None]:
    """(shuffles per group, why it is not the default, or None) for `n_rows` validation rows: the default,
    raised on small data."""
    default = REPEATS[modality]
    if modality not in SHUFFLED_ROWS:
        return default, None
    repeats = min(MAX_REPEATS, max(default, -(-SHUFFLED_ROWS[modality] // max(n_rows, 1))))
    if repeats == default:
        return repeats, None
    return repeats, (f"default {default}, raised for {n_rows} validation rows (about "
                     f"{SHUFFLED_ROWS[modality]:,} shuffled rows per group, at most {MAX_REPEATS} shuffles)")


def grouped_permutation_importance(predict: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray,
                                   labels: np.ndarray, groups: FeatureGroups, n_repeats: int, seed: int,
                                   kind: str = "feature", advance: Callable = lambda *a, **k: None) -> pd.DataFrame:
    """Accuracy drop per group over `n_repeats` seeded shuffles, with a 95% confidence interval."""
    rng = np.random.default_rng(seed)
    n = len(inputs)
    flat = inputs.reshape(n, -1)
    baseline = float(np.mean(predict(inputs).argmax(1) == labels))
    t = stats.t.ppf(0.975, n_repeats - 1) if n_repeats > 1 else 0.0
    rows = []
    for name, mask in zip(groups.names, groups.masks):
        columns = np.flatnonzero(mask)
        drops = np.empty(n_repeats)
        for r in range(n_repeats):
            shuffled = flat.copy()
            shuffled[:, columns] = flat[rng.permutation(n)][:, columns]
            drops[r] = baseline - float(np.mean(predict(shuffled.reshape(inputs.shape)).argmax(1) == labels))
        advance()
        half = t * drops.std(ddof=1) / np.sqrt(n_repeats) if n_repeats > 1 else 0.0
        rows.append({"kind": kind, "name": name, "importance_mean": drops.mean(),
                     "importance_std": drops.std(ddof=1) if n_repeats > 1 else 0.0,
                     "ci_low": drops.mean() - half, "ci_high": drops.mean() + half,
                     "n_repeats": n_repeats, "n_rows": n, "metric": METRIC, "baseline": baseline})
    return pd.DataFrame(rows)


def compute_permutation_importance(run_dir: str, files: dict[str, str], seed: int) -> dict:
    """Permutation importance on the validation split: per feature (tables), per region and channel (images)."""
    model = load_run_model(files["model"])
    val = read_split(files["validation"])
    rows = np.arange(len(val.labels))
    if len(rows) > MAX_ROWS[val.modality]:
        rows = np.sort(np.random.default_rng(seed).choice(rows, MAX_ROWS[val.modality], replace=False))
    inputs, labels = val.inputs[rows], val.labels[rows]
    if val.modality == "table":
        group_sets = [("feature", feature_columns(val.feature_names))]
    else:
        shape = tuple(val.inputs.shape[1:])
        group_sets = [("region", image_regions(shape, REGION_GRID)), ("channel", image_channels(shape))]
    repeats, why = choose_repeats(val.modality, len(rows))
    with progress_bar("permutation importance", total=sum(len(g.names) for _, g in group_sets)) as advance:
        tables = [grouped_permutation_importance(lambda x: model.predict_proba(x), inputs, labels, groups,
                                                 repeats, seed, kind, advance) for kind, groups in group_sets]
    table = pd.concat(tables, ignore_index=True)
    written = write_frame(layout.path(run_dir, "permutation_importance"), table)
    return {"files": {"permutation_importance": written}, "checks": [],
            "baseline": float(table["baseline"].iloc[0]), "n_repeats": repeats, "repeats_why": why,
            "n_rows": len(rows)}


def permutation_section(data: ReportData, result: dict) -> dict:
    table = pd.read_parquet(file_of(result, "permutation_importance"))
    parts = []
    for kind, title in (("feature", "per feature"), ("region", "per image region (4x4 grid)"),
                        ("channel", "per colour channel")):
        rows = table[table["kind"] == kind]
        if len(rows):
            figure = figures.importance_bars(rows, data.figure(f"permutation_{kind}.png"),
                                             f"permutation importance {title}")
            parts.append({"kind": kind, "title": title, "figure": data.rel(figure),
                          "top": rows.sort_values("importance_mean", ascending=False).head(TOP_TABLE_ROWS)
                                     .to_dict("records")})
    return {"parts": parts, "baseline": result["baseline"], "n_repeats": result["n_repeats"],
            "repeats_why": result.get("repeats_why"),
            "n_rows": result["n_rows"], "metric": table["metric"].iloc[0]}
