"""Evidence that the explanations are faithful to the model, beyond additivity.

- Cascading randomisation (Adebayo et al., 2018, "Sanity checks for saliency maps"): the
  trained layers are re-initialised from the top down, one more at each step, and the rows are
  explained again; Spearman's correlation with the trained model's map should fall. If the
  signed correlation stays above RANDOMISATION_THRESHOLD with every layer randomised, the maps
  do not depend on the model: flagged. The correlation of |attribution| is recorded too; it
  stays higher for input-times-gradient methods such as DeepSHAP, whose magnitudes follow the
  input's own outline (as Adebayo et al. report), which is why the flag uses the signed one.
- Deletion and insertion (images): pixels are removed from the image (set to the mean background
  image) or added to that reference, most-attributed first, in STEPS equal steps; the predicted
  class's probability is tracked. A faithful map gives a lower deletion area and a higher
  insertion area than random orders (RANDOM_ORDERS of them, seeded).
- Stability: the rows are explained again against a second background sample (another seed);
  Spearman's correlation and the overlap of the top-TOP_K groups say how much the top features move.

Files (in ``quality/``): ``randomisation.parquet`` (step, layer, position, spearman, spearman_abs),
``deletion_insertion.parquet`` (position, curve, order, fraction, probability) and
``stability.parquet`` (position, spearman, top_overlap).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from torch import nn

from tasks.deepshap.stage import ENGINES, select_background
from tasks.model.run_model import RunModel, load_run_model, weight_matrices
from tasks.report import figures
from tasks.report.sections import ReportData, file_of
from tasks.run import layout
from tasks.run.checks import SECTION_QUALITY, Check
from tasks.run.formats import background_images, read_shap_values, read_split, write_frame
from tasks.run.progress import progress_bar
from tasks.techniques.agreement import rank_agreement
from tasks.techniques.groups import comparison_groups

RANDOMISATION_THRESHOLD = 0.5  # mean Spearman with every layer randomised above this: maps ignore the model
STABILITY_THRESHOLD = 0.5  # mean Spearman between two backgrounds below this: unstable explanations
MAX_ROWS = 16  # explained rows given the deletion / insertion and stability checks
RANDOMISATION_ROWS = 8  # of those, rows re-explained at every randomisation step
RANDOMISATION_BACKGROUND = 50  # background rows for the re-explanations of randomised models
STEPS = 16  # deletion / insertion steps
RANDOM_ORDERS = 3
TOP_K = 5

Explainer = Callable[[RunModel, np.ndarray, np.ndarray], np.ndarray]  # (model, rows, targets) -> (n, *input)


def deep_shap_explainer(background: np.ndarray, engine: str = "fast") -> Explainer:
    """DeepSHAP of the target class of a model's probabilities, against `background`."""
    def explain(model: RunModel, rows: np.ndarray, targets: np.ndarray) -> np.ndarray:
        explain_fn = ENGINES[engine](model, torch.from_numpy(background))
        values = explain_fn(torch.from_numpy(rows))  # (n, K, *input)
        return values[np.arange(len(rows)), targets]
    return explain


def trained_layers(model: RunModel) -> list[str]:
    """The weight tensors randomised, input to output: of the reference model its trainable convolution and
    linear layers' weights; of a supplied model every weight matrix or kernel."""
    if model.record["source"] != "trained":
        return weight_matrices(model.weight_tensors())
    return [f"{name}.weight" for name, m in model.file.module.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.requires_grad]


def reinitialised(name: str, parameters: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """A fresh draw of the weight `name` and of its layer's bias, as PyTorch initialises convolution and linear
    layers (Kaiming-uniform weights, bias uniform in +-1/sqrt(fan_in)), from torch's global generator."""
    weight = torch.empty(parameters[name].shape)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    fresh = {name: weight}
    bias = name.removesuffix("weight") + "bias"
    if name.endswith("weight") and bias in parameters:
        bound = 1 / math.sqrt(weight[0].numel()) if weight[0].numel() else 0.0
        fresh[bias] = torch.empty(parameters[bias].shape).uniform_(-bound, bound)
    return fresh


def cascading_randomisation(model: RunModel, explain: Explainer, rows: np.ndarray, targets: np.ndarray,
                            seed: int, advance: Callable = lambda: None) -> pd.DataFrame:
    """Spearman of the maps of the trained model and of copies with the top 1, 2, ... layers re-initialised."""
    reference = explain(model, rows, targets).reshape(len(rows), -1)
    replaced: dict[str, torch.Tensor] = {}
    records = []
    for step, name in enumerate(reversed(trained_layers(model)), start=1):
        torch.manual_seed(seed + step)
        replaced.update(reinitialised(name, model.weight_tensors()))
        maps = explain(model.with_weights(replaced), rows, targets).reshape(len(rows), -1)
        for i in range(len(rows)):
            records.append({"step": step, "layer": name.removesuffix(".weight"), "position": i,
                            "spearman": _spearman(reference[i], maps[i]),
                            "spearman_abs": rank_agreement(reference[i], maps[i])[0]})
        advance()
    return pd.DataFrame(records)


def randomisation_verdict(table: pd.DataFrame) -> tuple[float, float, bool]:
    """Mean signed and absolute Spearman with every layer randomised (over the defined ones), and whether that
    flags the maps."""
    last = table[table["step"] == table["step"].max()]
    signed = float(last["spearman"].mean())
    return signed, float(last["spearman_abs"].mean()), signed > RANDOMISATION_THRESHOLD


def randomisation_judgement(table: pd.DataFrame, seed: int, n_boot: int = 1000) -> tuple[str, tuple[float, float]]:
    """Why the randomisation check cannot judge ("" when it can), and the 95% bootstrap interval (over the rows)
    of the mean signed Spearman with every layer randomised: it judges only when the interval lies on one side of
    RANDOMISATION_THRESHOLD."""
    last = table[table["step"] == table["step"].max()]["spearman"].dropna().to_numpy()
    if not len(last):
        return ("every correlation is undefined: the maps are constant, so no ranking can be compared",
                (float("nan"), float("nan")))
    rng = np.random.default_rng(seed)
    means = [last[rng.integers(0, len(last), len(last))].mean() for _ in range(n_boot)]
    low, high = (float(q) for q in np.quantile(means, [0.025, 0.975]))
    if low <= RANDOMISATION_THRESHOLD < high:
        return (f"the 95% interval of the mean Spearman, {low:.2f} to {high:.2f}, lies on both sides of "
                f"{RANDOMISATION_THRESHOLD}: too few rows to tell", (low, high))
    return "", (low, high)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's correlation, NaN (undefined) when either map is constant."""
    return float(spearmanr(a, b).statistic) if a.std() > 0 and b.std() > 0 else float("nan")


def deletion_insertion(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, attributions: np.ndarray,
                       targets: np.ndarray, reference: np.ndarray, seed: int) -> pd.DataFrame:
    """Probability of the target class as pixels are deleted / inserted in attribution and random orders."""
    rng = np.random.default_rng(seed)
    n, c, h, w = images.shape
    pixels = h * w
    records = []
    for i in range(n):
        orders = {"attribution": np.argsort(-attributions[i].sum(0).reshape(-1), kind="stable")}
        for r in range(RANDOM_ORDERS):
            orders[f"random {r}"] = rng.permutation(pixels)
        for order_name, order in orders.items():
            for curve in ("deletion", "insertion"):
                batch = []
                for step in range(STEPS + 1):
                    chosen = np.zeros(pixels, dtype=bool)
                    chosen[order[: round(step * pixels / STEPS)]] = True
                    mask = chosen.reshape(1, h, w)
                    start, end = (images[i], reference) if curve == "deletion" else (reference, images[i])
                    batch.append(np.where(mask, end, start))
                probs = predict(np.stack(batch).astype(np.float32))[:, targets[i]]
                for step, p in enumerate(probs):
                    records.append({"position": i, "curve": curve, "order": order_name.split(" ")[0],
                                    "repeat": order_name, "fraction": step / STEPS, "probability": float(p)})
    return pd.DataFrame(records)


def curve_areas(curves: pd.DataFrame) -> pd.DataFrame:
    """Area under each deletion / insertion curve (fraction on x), averaged over random repeats."""
    areas = (curves.groupby(["position", "curve", "order", "repeat"])
             .apply(lambda g: float(np.trapezoid(g["probability"], g["fraction"])), include_groups=False)
             .rename("auc").reset_index())
    return areas.groupby(["curve", "order"])["auc"].mean().unstack("order")


def margin_interval(curves: pd.DataFrame, curve: str, seed: int, n_boot: int = 1000) -> tuple[float, float]:
    """95% bootstrap interval (over images) of how much better the attribution order does than the random orders
    on `curve`: random AUC minus attribution AUC for deletion (lower is better), the reverse for insertion."""
    per_row = (curves[curves["curve"] == curve].groupby(["position", "order", "repeat"])
               .apply(lambda g: float(np.trapezoid(g["probability"], g["fraction"])), include_groups=False)
               .groupby(["position", "order"]).mean().unstack("order"))
    margin = (per_row["random"] - per_row["attribution"]).to_numpy()
    margin = margin if curve == "deletion" else -margin
    rng = np.random.default_rng(seed)
    means = [margin[rng.integers(0, len(margin), len(margin))].mean() for _ in range(n_boot)]
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def margin_judgement(low: float, high: float) -> str:
    """"" when the margin's interval excludes zero (the check can judge); why not otherwise."""
    if low > 0 or high < 0:
        return ""
    return (f"the 95% interval of the margin over random orders, {low:.3f} to {high:.3f}, includes zero: too few "
            "images to tell the attribution order from a random one")


def check_faithfulness(run_dir: str, files: dict[str, str], seed: int, engine: str = "fast") -> dict:
    """Randomisation, deletion/insertion (images) and stability checks for the first MAX_ROWS explained rows."""
    model = load_run_model(files["model"])
    train, val = read_split(files["train"]), read_split(files["validation"])
    explained = pd.read_parquet(files["explained"]).head(MAX_ROWS)
    rows = val.rows_of(explained["source_id"])
    targets = explained["predicted"].to_numpy()
    values, meta = read_shap_values(files["shap_values"])
    engine = meta.get("accountability.engine", engine)  # the engine the run's own values came from
    run_maps = values[explained["position"].to_numpy(), targets]  # (n, *input) of the run's own DeepSHAP
    background = background_images(files["background"])

    small = background[np.random.default_rng(seed).choice(len(background), min(RANDOMISATION_BACKGROUND,
                                                                               len(background)), replace=False)]
    layers = trained_layers(model)
    with progress_bar("randomisation check", total=len(layers)) as advance:
        randomisation = cascading_randomisation(model, deep_shap_explainer(small, engine), rows[:RANDOMISATION_ROWS],
                                                targets[:RANDOMISATION_ROWS], seed, advance)
    signed, absolute, _ = randomisation_verdict(randomisation)
    unjudged, interval = randomisation_judgement(randomisation, seed)
    written = {"randomisation": write_frame(layout.path(run_dir, "randomisation"), randomisation)}
    checks = [Check("deepshap.randomisation", "DeepSHAP", "cascading randomisation (signed Spearman, every layer "
                    "randomised)", signed if np.isfinite(signed) else 0.0, RANDOMISATION_THRESHOLD, "at most",
                    SECTION_QUALITY, "The DeepSHAP maps barely change when the model's weights are randomised: they "
                    "may not reflect what the model learned.", not_assessable=unjudged)]
    result = {"randomisation_final": signed, "randomisation_final_abs": absolute, "randomisation_interval": interval,
              "randomisation_threshold": RANDOMISATION_THRESHOLD,
              "n_layers": len(layers), "randomisation_rows": min(RANDOMISATION_ROWS, len(rows))}

    if val.modality == "image":
        curves = deletion_insertion(lambda x: model.predict_proba(x), rows, run_maps, targets,
                                    background.mean(0), seed)
        areas = curve_areas(curves)
        written["deletion_insertion"] = write_frame(layout.path(run_dir, "deletion_insertion"), curves)
        result["areas"] = {curve: {order: float(areas.loc[curve, order]) for order in areas.columns}
                           for curve in areas.index}
        result["margins"] = {curve: margin_interval(curves, curve, seed) for curve in ("deletion", "insertion")}
        checks += [Check("deepshap.deletion", "DeepSHAP", "deletion: area under the curve, against random orders",
                         result["areas"]["deletion"]["attribution"], result["areas"]["deletion"]["random"],
                         "at most", SECTION_QUALITY,
                         "Removing pixels in attribution order is no better than a random order.",
                         not_assessable=margin_judgement(*result["margins"]["deletion"])),
                   Check("deepshap.insertion", "DeepSHAP", "insertion: area under the curve, against random orders",
                         result["areas"]["insertion"]["attribution"], result["areas"]["insertion"]["random"],
                         "at least", SECTION_QUALITY,
                         "Adding pixels in attribution order is no better than a random order.",
                         not_assessable=margin_judgement(*result["margins"]["insertion"]))]

    second = train.inputs[select_background(len(train.inputs), len(background), seed + 1)]
    again = deep_shap_explainer(second, engine)(model, rows, targets)
    groups = comparison_groups(val.modality, list(val.inputs.shape[1:]), val.feature_names)
    first_g, again_g = groups.aggregate(run_maps), groups.aggregate(again)
    stability = pd.DataFrame([{"position": int(p), "spearman": rho, "top_overlap": overlap}
                              for p, (rho, overlap) in zip(explained["position"],
                                                           (rank_agreement(a, b, TOP_K) for a, b in zip(first_g, again_g)))])
    written["stability"] = write_frame(layout.path(run_dir, "stability"), stability)
    mean = float(stability["spearman"].mean())  # over the defined correlations (NaN: a constant map)
    checks.append(Check("deepshap.stability", "DeepSHAP", "stability across two background samples (mean Spearman)",
                        mean if np.isfinite(mean) else 0.0, STABILITY_THRESHOLD, "at least", SECTION_QUALITY,
                        f"Explanations move with the background sample (mean Spearman {mean:.2f} between two "
                        "samples).", not_assessable="" if np.isfinite(mean) else
                        "every map is constant, so no ranking can be compared between the two samples"))
    result.update({"stability_mean": mean, "stability_overlap": float(stability["top_overlap"].mean()),
                   "stability_threshold": STABILITY_THRESHOLD, "n_rows": len(rows)})
    return {"files": written, "checks": [c.to_json() for c in checks], **result}


def faithfulness_section(data: ReportData, result: dict) -> dict:
    """Randomisation curve, deletion/insertion curves and their areas, stability figures."""
    randomisation = pd.read_parquet(file_of(result, "randomisation"))
    section = {**{k: v for k, v in result.items() if k not in ("files", "checks")},
               "randomisation_figure": data.rel(figures.randomisation_curve(
                   randomisation, result["randomisation_threshold"], data.figure("randomisation.png"))),
               "deletion_figure": None}
    if "deletion_insertion" in result["files"]:
        curves = pd.read_parquet(file_of(result, "deletion_insertion"))
        section["deletion_figure"] = data.rel(figures.deletion_insertion_curves(curves,
                                                                                 data.figure("deletion_insertion.png")))
    return section
