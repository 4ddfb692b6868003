"""Fairness: the model's outcomes per group of each protected attribute (`--protected COLUMN` for tables,
`--metadata FILE` for images), with fairlearn's metrics (EU AI Act Annex IV 2(g), FDA subgroup performance).

For each attribute and each class of interest (binary: the positive class; multi-class: each class
one-vs-rest), fairlearn's MetricFrame gives per group the support, selection rate (share predicted
as the class), true and false positive rates, and fairlearn's functions the demographic parity
difference and ratio and the equalized odds difference across groups; their bootstrap 95% intervals
are computed here (`bootstrap_parity`, same definitions, vectorised). Accuracy per group is over all
classes. Groups with fewer than MIN_GROUP_ROWS validation rows are listed, not assessed.

Checks: the four-fifths rule (the lowest group selection rate over the highest, at least
`fairness.selection_rate_ratio`) and the equalized odds difference (at most `fairness.equalized_odds`).

Files ``analysis/fairness_groups.parquet`` (attribute, group, class_name, support, accuracy,
selection_rate, tpr, fpr) and ``analysis/fairness.parquet`` (attribute, class_name, the differences and
ratio with their intervals).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from fairlearn.metrics import (MetricFrame, count, demographic_parity_difference, demographic_parity_ratio,
                               equalized_odds_difference, false_positive_rate, selection_rate, true_positive_rate)

from tasks.model.run_model import load_run_model
from tasks.report import validator_figures
from tasks.report.sections import ReportData, file_of
from tasks.run import layout
from tasks.run.checks import SECTION_PERFORMANCE, Check
from tasks.run.formats import read_split, write_frame
from tasks.steps.model_card import DEFAULT_FAIRNESS, FAIRNESS_MEASURES, read_card_record, stated, threshold
from tasks.techniques.positive import run_positive_index

MIN_GROUP_ROWS = 10
BOOTSTRAP = 200
NOT_NAMED = ("No protected attribute was named (--protected COLUMN for tables, --metadata FILE with --protected "
             "for images): fairness was not assessed.")


def accuracy(y_true, y_pred) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def group_fairness(labels: np.ndarray, predicted: np.ndarray, groups: list[str], classes: list[int],
                   class_names: list[str], seed: int, n_boot: int = BOOTSTRAP) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per group and per class of interest, fairlearn's rates; across groups, fairlearn's parity measures with
    bootstrap 95% intervals (`bootstrap_parity`)."""
    groups = np.asarray(groups, dtype=object)
    overall = MetricFrame(metrics=accuracy, y_true=labels, y_pred=predicted, sensitive_features=groups).by_group
    codes, levels = pd.factorize(groups, sort=True)
    resamples = np.random.default_rng(seed).integers(0, len(labels), (n_boot, len(labels)))  # shared by the classes
    per_group, summary = [], []
    for k in classes:
        y_true, y_pred = (labels == k).astype(int), (predicted == k).astype(int)
        frame = MetricFrame(metrics={"support": count, "selection_rate": selection_rate, "tpr": true_positive_rate,
                                     "fpr": false_positive_rate},
                            y_true=y_true, y_pred=y_pred, sensitive_features=groups)
        for group, row in frame.by_group.iterrows():
            per_group.append({"group": str(group), "class_name": class_names[k], "support": int(row["support"]),
                              "accuracy": float(overall[group]), "base_rate": float(y_true[groups == group].mean()),
                              "selection_rate": float(row["selection_rate"]),
                              "tpr": float(row["tpr"]), "fpr": float(row["fpr"])})
        intervals = bootstrap_parity(y_true, y_pred, codes, len(levels), resamples)
        base = np.array([y_true[codes == g].mean() for g in range(len(levels))])
        found = [y_pred[(codes == g) & (y_true == 1)].mean() for g in range(len(levels))
                 if ((codes == g) & (y_true == 1)).any()]  # each group's true positive rate
        summary.append({
            "class_name": class_names[k],
            "base_rate_ratio": float(base.min() / base.max()) if base.max() > 0 else float("nan"),
            "eop_difference": float(np.ptp(found)) if found else float("nan"),  # equal opportunity: TPR gap
            "dp_difference": float(demographic_parity_difference(y_true, y_pred, sensitive_features=groups)),
            "dp_ratio": float(demographic_parity_ratio(y_true, y_pred, sensitive_features=groups)),
            "eo_difference": float(equalized_odds_difference(y_true, y_pred, sensitive_features=groups)),
            **intervals,
        })
    return pd.DataFrame(per_group), pd.DataFrame(summary)


def bootstrap_parity(y_true: np.ndarray, y_pred: np.ndarray, codes: np.ndarray, n_groups: int,
                     resamples: np.ndarray) -> dict[str, float]:
    """95% percentile intervals of the demographic parity difference and ratio and the equalized odds
    difference, over `resamples` (n_boot, n) of row indices. fairlearn's MetricFrame(n_boot=...) gives the
    same intervals from one DataFrame per resample (about 70 ms each: minutes for ten classes); here every
    resample's per-group counts come from one bincount. tests/test_validators.py checks the point values
    against fairlearn's."""
    n_boot = len(resamples)
    key = (np.arange(n_boot)[:, None] * n_groups + codes[resamples]).ravel()

    def per_group(values: np.ndarray) -> np.ndarray:  # (n_boot, n_groups) sums of `values` over each group's rows
        return np.bincount(key, weights=values[resamples].ravel(), minlength=n_boot * n_groups).reshape(n_boot, -1)

    rows, selected = per_group(np.ones(len(y_true))), per_group(y_pred.astype(float))
    positives, hits = per_group(y_true.astype(float)), per_group((y_true & y_pred).astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        selection = np.where(rows > 0, selected / rows, np.nan)
        tpr = np.where(positives > 0, hits / positives, np.nan)
        fpr = np.where(rows - positives > 0, (selected - hits) / (rows - positives), np.nan)
        spread = {name: np.nanmax(rate, 1) - np.nanmin(rate, 1) for name, rate in
                  (("selection", selection), ("tpr", tpr), ("fpr", fpr))}
        ratio = np.nanmin(selection, 1) / np.nanmax(selection, 1)
    measures = {"dp_difference": spread["selection"], "dp_ratio": ratio,
                "eo_difference": np.fmax(spread["tpr"], spread["fpr"])}
    found = {}
    for name, values in measures.items():
        found[f"{name}_low"], found[f"{name}_high"] = (float(q) for q in np.nanquantile(values, [0.025, 0.975]))
    return found


def assess_fairness(run_dir: str, files: dict[str, str], seed: int) -> dict:
    """Fairness of the validation predictions across the groups of each protected attribute."""
    val = read_split(files["validation"])
    if not val.groups:
        return {"skipped": NOT_NAMED, "files": {}, "checks": []}
    model = load_run_model(files["model"])
    predicted = model.predict_proba(val.inputs).argmax(1)
    positive = run_positive_index(files["run_record"], val.class_names)
    classes = [positive] if positive is not None else list(range(len(val.class_names)))
    per_group, summary, too_small = [], [], []
    for attribute, values in val.groups.items():
        values = np.asarray(values, dtype=object)
        sizes = pd.Series(values).value_counts()
        small = sorted(str(g) for g in sizes[sizes < MIN_GROUP_ROWS].index)
        too_small += [{"attribute": attribute, "group": g, "rows": int(sizes[g])} for g in small]
        kept = ~np.isin(values, small)
        if len(set(values[kept])) < 2:
            continue
        groups_table, summary_table = group_fairness(val.labels[kept], predicted[kept], list(values[kept]), classes,
                                                     val.class_names, seed)
        per_group.append(groups_table.assign(attribute=attribute))
        summary.append(summary_table.assign(attribute=attribute))
    if not summary:
        return {"skipped": f"No protected attribute has two groups of at least {MIN_GROUP_ROWS} validation rows "
                           f"({', '.join(val.groups)}): fairness was not assessed.", "files": {}, "checks": [],
                "too_small": too_small}
    per_group, summary = pd.concat(per_group, ignore_index=True), pd.concat(summary, ignore_index=True)
    ratio_bound, eo_bound, eop_bound = (threshold(files["card_record"], key) for key in (
        "fairness.selection_rate_ratio", "fairness.equalized_odds", "fairness.equal_opportunity"))
    low_ratio = summary[summary["dp_ratio"] < ratio_bound]
    high_eo = summary[summary["eo_difference"] > eo_bound]
    high_eop = summary[summary["eop_difference"] > eop_bound]
    checks = [
        Check("fairness.selection_rate_ratio", "Fairness", "selection rate ratio, lowest group over highest "
              "(four-fifths rule)", float(summary["dp_ratio"].min()), ratio_bound, "at least", SECTION_PERFORMANCE,
              f"{len(low_ratio)} attribute and class pair(s) fail the four-fifths rule.",
              details=tuple(f"Fairness: by {r.attribute}, the selection rate of '{r.class_name}' in the least selected "
                            f"group is {r.dp_ratio:.2f} of the most selected (95% CI {r.dp_ratio_low:.2f} to "
                            f"{r.dp_ratio_high:.2f}); in the labels themselves the ratio of base rates is "
                            f"{r.base_rate_ratio:.2f}"
                            + (", so the model is closer to parity than the outcomes it predicts." if r.dp_ratio >=
                               r.base_rate_ratio else ".") for r in low_ratio.itertuples())),
        Check("fairness.equalized_odds", "Fairness", "equalized odds difference", float(summary["eo_difference"].max()),
              eo_bound, "at most", SECTION_PERFORMANCE,
              f"{len(high_eo)} attribute and class pair(s) have an equalized odds difference over {eo_bound}.",
              details=tuple(f"Fairness: by {r.attribute}, true or false positive rates for '{r.class_name}' differ by "
                            f"{r.eo_difference:.3f} between groups (95% CI {r.eo_difference_low:.3f} to "
                            f"{r.eo_difference_high:.3f})." for r in high_eo.itertuples())),
        Check("fairness.equal_opportunity", "Fairness", "equal opportunity difference (true positive rates)",
              float(summary["eop_difference"].max()), eop_bound, "at most", SECTION_PERFORMANCE,
              f"{len(high_eop)} attribute and class pair(s) have true positive rates differing by more than "
              f"{eop_bound} between groups.",
              details=tuple(f"Fairness: by {r.attribute}, the true positive rate for '{r.class_name}' differs by "
                            f"{r.eop_difference:.3f} between groups." for r in high_eop.itertuples())),
    ]
    card = read_card_record(files["card_record"])
    measures = card.get("fairness_measures", list(DEFAULT_FAIRNESS))
    applies = {FAIRNESS_MEASURES[m] for m in measures}
    checks = [c for c in checks if c.id in applies]  # the measures the card says apply to this use
    written = {"fairness_groups": write_frame(layout.path(run_dir, "fairness_groups"), per_group),
               "fairness": write_frame(layout.path(run_dir, "fairness"), summary)}
    return {"files": written, "checks": [c.to_json() for c in checks], "attributes": list(val.groups),
            "favourable": stated(card, "favourable_outcome"), "measures": measures,
            "too_small": too_small, "positive": val.class_names[positive] if positive is not None else None,
            "n_rows": len(val.labels), "min_group_rows": MIN_GROUP_ROWS}


def fairness_section(data: ReportData, result: dict) -> dict:
    per_group = pd.read_parquet(file_of(result, "fairness_groups"))
    summary = pd.read_parquet(file_of(result, "fairness"))
    figure = validator_figures.fairness_bars(per_group, data.figure("fairness.png"))
    return {**{k: v for k, v in result.items() if k not in ("files", "checks")}, "figure": data.rel(figure),
            "groups": per_group.to_dict("records"), "summary": summary.to_dict("records")}
