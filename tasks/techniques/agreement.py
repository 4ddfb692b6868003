"""Method agreement: do DeepSHAP, Integrated Gradients, LIME, Kernel SHAP and permutation importance
point at the same features?

For each explained row and each pair of methods: Spearman's rank correlation of the attribution
magnitudes of the predicted class, over the comparison groups (table columns, or image regions
of tasks/feature_groups.py), and the overlap of the two top-TOP_K sets. Permutation importance
is global, so its one vector is compared with each row's local attributions. A pair below
THRESHOLD is flagged as disagreeing: the report lists it rather than hiding it. A row is
flagged when the median of its pairs' correlations is below THRESHOLD (most methods disagree).

File ``analysis/agreement.parquet``, one row per (explained row, method pair): position,
source_id, method_a, method_b, spearman, top_overlap, flagged.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from scipy.stats import spearmanr

from tasks.report import figures
from tasks.report.sections import TOP_TABLE_ROWS, ReportData, file_of
from tasks.run import layout
from tasks.run.checks import SECTION_QUALITY, Check
from tasks.run.formats import META_ENGINE, read_kernel_shap, read_shap_values, read_split, write_frame
from tasks.techniques.groups import KERNEL_GRID, comparison_groups, image_regions

TOP_K = 5
THRESHOLD = 0.3  # Spearman below this: the two methods disagree on that row


def rank_agreement(a: np.ndarray, b: np.ndarray, top_k: int = TOP_K) -> tuple[float, float]:
    """Spearman correlation of |a| and |b| (NaN, undefined, when either is constant: no ranking to compare), and
    the share of their top-k groups in common."""
    a, b = np.abs(a), np.abs(b)
    rho = spearmanr(a, b).statistic if a.std() > 0 and b.std() > 0 else float("nan")
    k = min(top_k, len(a))
    overlap = len(set(np.argsort(-a)[:k]) & set(np.argsort(-b)[:k])) / k
    return float(rho), overlap


def agreement_table(attributions: dict[str, dict[int, np.ndarray]], global_importance: np.ndarray | None,
                    source_ids: dict[int, str]) -> pd.DataFrame:
    """Pairwise agreement per row. `attributions[method][position]` is that row's (n_groups,) vector."""
    methods = dict(attributions)
    rows = []
    for position in sorted(source_ids):
        vectors = {m: v[position] for m, v in methods.items() if position in v}
        if global_importance is not None:
            vectors["permutation importance"] = global_importance
        for a, b in itertools.combinations(vectors, 2):
            rho, overlap = rank_agreement(vectors[a], vectors[b])
            rows.append({"position": position, "source_id": source_ids[position], "method_a": a, "method_b": b,
                         "spearman": rho, "top_overlap": overlap,
                         "flagged": bool(np.isfinite(rho) and rho < THRESHOLD)})  # undefined: not disagreement
    return pd.DataFrame(rows)


def flagged_rows(table: pd.DataFrame) -> list[int]:
    """Positions of the rows whose median pairwise Spearman (over the defined ones) is below THRESHOLD."""
    medians = table.groupby("position")["spearman"].median()  # NaN (undefined) left out; a row of NaN stays NaN
    return [int(p) for p in medians.index[medians < THRESHOLD]]


def measure_agreement(run_dir: str, files: dict[str, str], seed: int) -> dict:
    """Collect every method's attributions of the predicted class on the comparison groups; write Parquet."""
    validation = read_split(files["validation"])
    modality, shape = validation.modality, list(validation.inputs.shape[1:])
    groups = comparison_groups(modality, shape, validation.feature_names)
    explained = pd.read_parquet(files["explained"])
    predicted = dict(zip(explained["position"], explained["predicted"]))
    source_ids = dict(zip(explained["position"], explained["source_id"]))
    values, meta = read_shap_values(files["shap_values"])  # (n, K, *shape)
    stage = "DeepSHAP" if meta.get(META_ENGINE.decode()) != "kernel" else "Kernel SHAP (SHAP stage)"
    attributions = {stage: {p: groups.aggregate(values[p, predicted[p]]) for p in predicted}}

    if Path(files["gradients"]).exists():  # not for a model without a torch graph
        grads = pq.read_table(files["gradients"]).to_pandas()
        attributions["Integrated Gradients"] = {
            p: groups.aggregate(np.asarray(v).reshape(shape))
            for p, v in zip(grads["position"], grads["integrated_gradients"])}
    lime_rows = pq.read_table(files["lime"]).to_pandas()
    attributions["LIME"] = {p: groups.aggregate(np.asarray(v).reshape(shape))
                            for p, v in zip(lime_rows["position"], lime_rows["values"])}
    frame, kernel_values, _ = read_kernel_shap(files["kernel_shap"])
    players = None if modality == "table" else image_regions(tuple(shape), KERNEL_GRID)
    kernel = attributions.setdefault("Kernel SHAP", {}) if stage == "DeepSHAP" else {}  # never with itself
    for i, p in enumerate(frame["position"].unique()):
        phi = kernel_values[i, predicted[p]]
        if players is not None:  # patch values spread over their pixels, then summed per comparison region
            phi = groups.aggregate(players.spread(phi))
        kernel[p] = phi

    permutation = pd.read_parquet(files["permutation_importance"])
    kind = "feature" if modality == "table" else "region"
    global_importance = permutation[permutation["kind"] == kind].set_index("name").loc[groups.names, "importance_mean"]
    table = agreement_table(attributions, global_importance.to_numpy(), source_ids)
    summary = table.groupby(["method_a", "method_b"], sort=False)["spearman"].mean().reset_index()
    n_flagged = len(flagged_rows(table))
    n_undefined = int((~np.isfinite(table["spearman"])).sum())
    judged = int(table.groupby("position")["spearman"].median().notna().sum())
    check = Check("method-agreement.disagreement", "Method agreement", f"rows whose median pairwise Spearman is "
                  f"below {THRESHOLD}", n_flagged, 0, "at most", SECTION_QUALITY,
                  f"Explanation methods disagree (median pairwise Spearman below {THRESHOLD}) on {n_flagged} of "
                  f"{judged} explained rows.", unit="count",
                  details=(f"{n_undefined} of {len(table)} method pairs have an undefined correlation (one method "
                           "gives the same value to every feature) and are not counted.",) if n_undefined else (),
                  not_assessable="" if judged else "every correlation is undefined: the methods give constant "
                  "attributions (a model that does not react to its inputs), so there is no ranking to compare")
    return {"files": {"agreement": write_frame(layout.path(run_dir, "agreement"), table)},
            "checks": [check.to_json()], "n_flagged_rows": n_flagged,
            "mean_spearman": json.loads(summary.to_json(orient="records"))}


def agreement_section(data: ReportData, result: dict) -> dict:
    table = pd.read_parquet(file_of(result, "agreement"))
    methods = list(dict.fromkeys(list(table["method_a"]) + list(table["method_b"])))
    matrix = pd.DataFrame(np.eye(len(methods)), index=methods, columns=methods)
    pairs = table.groupby(["method_a", "method_b"], sort=False).agg(
        spearman=("spearman", "mean"), top_overlap=("top_overlap", "mean"), flagged=("flagged", "sum"),
        rows=("position", "nunique")).reset_index()
    for pair in pairs.itertuples():
        matrix.loc[pair.method_a, pair.method_b] = matrix.loc[pair.method_b, pair.method_a] = pair.spearman
    figure = figures.agreement_matrix(matrix, data.figure("agreement.png"))
    flagged = table[table["flagged"]]
    return {"figure": data.rel(figure), "pairs": pairs.to_dict("records"), "threshold": THRESHOLD,
            "n_rows": int(table["position"].nunique()), "n_flagged_rows": len(flagged_rows(table)),
            "flagged": flagged.sort_values("spearman").head(TOP_TABLE_ROWS).to_dict("records")}
