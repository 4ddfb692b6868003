"""Performance floors: the checks that tell a useless model from a working one (material findings by default).

On the evaluation population (every row for a supplied model, the validation split for a trained one: the rows the
headline metrics use):

- ``performance.no_information``: accuracy better than the no-information rate (the majority class's share), by a
  one-sided exact binomial test at level ALPHA. A model that cannot show it beats always guessing the commonest
  class fails, whatever its headline accuracy.
- ``performance.class_recall``: no class whose recall is significantly below the floor (model card
  ``thresholds: performance.recall_floor``): the one-sided 95% Clopper-Pearson upper bound of its recall is below
  the floor. A class too small for even zero correct rows to be judged is listed as such.
- ``performance.degenerate``: one class predicted for nearly every row (DEGENERATE_SHARE, or more than halfway from
  that class's share of the labels to every row).
- ``performance.flat_probabilities``: the top probability hardly varies across rows (a network that ignores its
  input).
- ``data.lineage``: where the evaluation data comes from. A supplied model's card declares it (``evaluation_data``:
  independent, out-of-time, in-sample, unknown): in-sample data is a material finding, an unknown lineage a moderate
  one. A model trained here is measured on a split it never saw.
- ``model.untrained``: normalisation layers still at their initial values (BatchNorm running mean 0 and variance 1,
  scale 1, shift 0): a network that was never trained, or whose trained state was not saved. Made only for models
  with such layers.

File ``analysis/floors.parquet``: one row per class (rows, correct, recall, its upper bound, predicted share).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from tasks.model.run_model import load_run_model
from tasks.report.sections import ReportData, file_of
from tasks.run import layout
from tasks.run.checks import MODERATE, SECTION_PERFORMANCE, Check
from tasks.run.formats import write_frame
from tasks.steps.model_card import read_card_record, threshold
from tasks.techniques.population import ALPHA, evaluation_population, upper_bound

DEGENERATE_SHARE = 0.95  # predicting one class for this share of rows (beyond its share of the labels) is degenerate
FLAT_SPREAD = 1e-3  # standard deviation of the top probability across rows below this: flat
UNTRAINED_SHARE = 0.5  # normalisation layers at their initial values: more than this share flags the model


def no_information(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> dict:
    """Accuracy, the no-information rate and the one-sided binomial p-value of accuracy exceeding it."""
    correct, n = int((labels == predicted).sum()), len(labels)
    rate = float(np.bincount(labels, minlength=n_classes).max() / n)
    p = binomtest(correct, n, rate, alternative="greater").pvalue if rate < 1 else 1.0
    return {"accuracy": correct / n, "rate": rate, "p_value": float(p), "correct": correct, "n": n}


def per_class(labels: np.ndarray, predicted: np.ndarray, class_names: list[str], floor: float) -> pd.DataFrame:
    rows = []
    for k, name in enumerate(class_names):
        members = labels == k
        n, hits = int(members.sum()), int((predicted[members] == k).sum())
        rows.append({"class_name": name, "n_rows": n, "correct": hits, "recall": hits / n if n else float("nan"),
                     "recall_upper": upper_bound(hits, n) if n else float("nan"),
                     "judgeable": bool(n and upper_bound(0, n) < floor),
                     "label_share": n / len(labels), "predicted_share": float((predicted == k).mean())})
    table = pd.DataFrame(rows)
    table["below_floor"] = table["judgeable"] & (table["recall_upper"] < floor)
    return table


def untrained_layers(parameters: dict[str, np.ndarray]) -> tuple[int, int]:
    """(normalisation layers at their initial values, normalisation layers): BatchNorm-style layers, found by their
    running statistics, with scale and shift where the layer has them."""
    layers = [name.removesuffix("running_mean") for name in parameters if name.endswith("running_mean")]
    at_init = 0
    for prefix in layers:
        values = {part: parameters.get(prefix + part) for part in ("running_mean", "running_var", "weight", "bias")}
        initial = {"running_mean": 0.0, "running_var": 1.0, "weight": 1.0, "bias": 0.0}
        at_init += all(v is None or np.array_equal(np.asarray(v, np.float64), np.full(np.shape(v), initial[part]))
                       for part, v in values.items())
    return at_init, len(layers)


def check_floors(run_dir: str, files: dict[str, str], seed: int) -> dict:
    """The performance floors on the evaluation population."""
    model = load_run_model(files["model"])
    supplied = model.record["source"] == "supplied"
    rows, population = evaluation_population(files, supplied)
    probs = model.predict_proba(rows.inputs)
    predicted = probs.argmax(1)
    names = rows.class_names
    floor = threshold(files["card_record"], "performance.recall_floor")
    test = no_information(rows.labels, predicted, len(names))
    table = per_class(rows.labels, predicted, names, floor)
    checks = [Check("performance.no_information", "Performance floor", "better than the no-information rate "
                    "(one-sided binomial p-value)", test["p_value"], ALPHA, "at most", SECTION_PERFORMANCE,
                    f"Accuracy {test['accuracy']:.3f} on {test['n']} rows is not significantly better than the "
                    f"no-information rate {test['rate']:.3f} (always predicting the commonest class): p = "
                    f"{test['p_value']:.3g}, above {ALPHA}.")]
    below, unjudged = table[table["below_floor"]], table[~table["judgeable"]]
    checks.append(Check(
        "performance.class_recall", "Performance floor", f"classes with recall significantly below {floor:g}",
        len(below), 0, "at most", SECTION_PERFORMANCE,
        f"{len(below)} class(es) have recall significantly below the floor {floor:g}.",
        details=tuple(f"Class {r.class_name}: recall {r.recall:.3f} ({r.correct} of {r.n_rows} rows; 95% upper "
                      f"bound {r.recall_upper:.3f}) is below the floor {floor:g}." for r in below.itertuples()),
        unit="count", not_assessable="" if len(unjudged) < len(table) else
        f"every class has too few rows for its recall to be judged against the floor {floor:g}"))
    top = int(np.bincount(predicted, minlength=len(names)).argmax())
    share, base = float((predicted == top).mean()), float((rows.labels == top).mean())
    limit = max(DEGENERATE_SHARE, base + (1 - base) / 2)
    checks.append(Check("performance.degenerate", "Performance floor", "share of rows given the most frequent "
                        "prediction", share, limit, "at most", SECTION_PERFORMANCE,
                        f"Degenerate predictor: it predicts class {names[top]} for {share:.1%} of rows, where "
                        f"{base:.1%} of the rows are of that class.", unit="share"))
    spread = float(probs.max(1).std())
    checks.append(Check("performance.flat_probabilities", "Performance floor", "spread of the top probability across "
                        "rows (standard deviation)", spread, FLAT_SPREAD, "at least", SECTION_PERFORMANCE,
                        f"Flat probabilities: the top probability varies by {spread:.2e} across rows; the model "
                        "hardly reacts to its input."))
    card = read_card_record(files["card_record"])
    checks.append(lineage_check(card, supplied))
    at_init, n_layers = untrained_layers(model.file.parameters)
    if n_layers:
        checks.append(Check("model.untrained", "Performance floor", "share of normalisation layers at their initial "
                            "values", at_init / n_layers, UNTRAINED_SHARE, "at most", SECTION_PERFORMANCE,
                            f"Untrained-looking network: {at_init} of {n_layers} normalisation layers are at their "
                            "initial values (running mean 0, variance 1, scale 1, shift 0).", unit="share"))
    return {"files": {"floors": write_frame(layout.path(run_dir, "floors"), table)},
            "checks": [c.to_json() for c in checks], "population": population, "floor": floor,
            "no_information": test, "untrained": {"at_init": at_init, "layers": n_layers},
            "unjudged": unjudged["class_name"].tolist(), "lineage": lineage(card, supplied)}


def lineage(card: dict, supplied: bool) -> str:
    """The evaluation data's lineage as the report states it."""
    if not supplied:
        return "independent: a held-out split made by this run, never used in training"
    stated = card.get("evaluation_data", "unknown")
    return stated if card.get("evaluation_data_stated") else "unknown (the model card does not state evaluation_data)"


def lineage_check(card: dict, supplied: bool) -> Check:
    """data.lineage: in-sample evaluation data is a material finding (the default severity), unknown a moderate one."""
    stated = card.get("evaluation_data", "unknown") if supplied else "independent"
    ok = stated in ("independent", "out-of-time")
    finding = ("The evaluation data is in-sample (the model was fitted on it): its metrics overstate how the model "
               "performs on new data." if stated == "in-sample" else
               "The evaluation data's lineage is unknown (model card evaluation_data): the metrics may be in-sample "
               "and overstate performance.")
    return Check("data.lineage", "Evaluation data", "lineage of the evaluation data (1: in-sample or unknown)",
                 0.0 if ok else 1.0, 0.0, "at most", SECTION_PERFORMANCE, finding, unit="count",
                 severity=MODERATE if stated == "unknown" else "")  # the card's `severities` still override it


def floors_section(data: ReportData, result: dict) -> dict:
    table = pd.read_parquet(file_of(result, "floors"))
    return {**{k: v for k, v in result.items() if k not in ("files", "checks")}, "classes": table.to_dict("records")}
