"""The challenger: a simple, well-understood model trained on the same training split, scored beside the model
under validation (the champion) on the same validation rows (PRA SS1/23 principle 4.2, SR 26-2 benchmarking).

The challenger is a multinomial logistic regression on standardised features: the table's columns,
or for images the pixels averaged down to at most POOLED x POOLED per channel. The accuracy
difference (champion minus challenger) gets a paired bootstrap 95% interval; the check fails when
the whole interval lies below `challenger.margin` (the champion is significantly worse).

The owner may name their own challenger instead (``--challenger FILE``, the formats of ``--model``):
it must take the same inputs as the model under validation (after any fitting of the data to it), and
is copied into the run as ``model/challenger_model`` so that `verify` covers it.

Files ``model/challenger.safetensors`` (the built-in challenger's coefficients, intercepts and
standardisation: the challenger itself, auditable and re-runnable without a pickle) and
``analysis/challenger.parquet`` (per validation row: source_id, label, champion, challenger predictions).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.preprocessing import StandardScaler

from tasks.model.run_model import detect_outputs, load_run_model
from tasks.model.formats import detect_format
from tasks.model.supplied import open_model
from tasks.report import validator_figures
from tasks.report.sections import ReportData, file_of
from tasks.run import layout
from tasks.run.artifacts import atomic_path, write_bytes_atomic
from tasks.run.errors import InputError, first_line
from tasks.run.checks import SECTION_PERFORMANCE, Check
from tasks.run.formats import file_ref, read_split, write_frame
from tasks.steps.model_card import threshold

POOLED = 8  # images: challenger features are the pixels averaged to at most POOLED x POOLED per channel
BOOTSTRAP = 1000
DESCRIPTION = {"table": "logistic regression on the standardised features",
               "image": f"logistic regression on the standardised pixels, averaged down to at most "
                        f"{POOLED}x{POOLED} per channel"}


def challenger_features(inputs: np.ndarray) -> np.ndarray:
    """Table rows as they are; images (n, C, H, W) average-pooled to at most POOLED x POOLED, flattened."""
    if inputs.ndim == 2:
        return inputs
    pooled = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(inputs), (min(POOLED, inputs.shape[2]),
                                                                                 min(POOLED, inputs.shape[3])))
    return pooled.flatten(1).numpy()


def fit_challenger(inputs: np.ndarray, labels: np.ndarray, seed: int) -> tuple[StandardScaler, LogisticRegression]:
    scaler = StandardScaler().fit(challenger_features(inputs))
    model = LogisticRegression(max_iter=2000, random_state=seed).fit(scaler.transform(challenger_features(inputs)),
                                                                     labels)
    return scaler, model


def owner_challenger(path: Path, inputs: np.ndarray, feature_names: list[str], n_classes: int) -> np.ndarray:
    """The class probabilities of the owner's challenger model file on `inputs`; InputError when it cannot
    take them (the load step tries it on a few rows, so that a run that cannot finish never starts)."""
    try:
        model = open_model(path)
    except InputError as exc:
        raise InputError(str(exc).replace("--model", "--challenger", 1)) from None
    x = inputs
    if model.column_inputs:  # an ONNX table model with one input per column: fed by name
        missing = [c for c in model.column_inputs if c not in feature_names]
        if missing:
            raise InputError(f"--challenger {path} takes columns the data lacks: {missing[:5]}")
        x = inputs[:, [feature_names.index(c) for c in model.column_inputs]]
    try:
        outputs = model.run(x)
    except Exception as exc:  # noqa: BLE001 - any failure to run means it cannot take these inputs
        raise InputError(f"--challenger {path} cannot run on the data ({first_line(exc)}); it must take the same "
                         "inputs as the model under validation") from None
    if outputs.ndim != 2 or outputs.shape[1] != n_classes:
        raise InputError(f"--challenger {path} returns shape {tuple(outputs.shape)}; (rows, {n_classes}) expected")
    if not np.isfinite(outputs).all():
        raise InputError(f"--challenger {path} returns NaN or infinite values")
    if detect_outputs(outputs, None, path) == "logits":
        return torch.softmax(torch.from_numpy(outputs), dim=1).numpy()
    return outputs


def paired_bootstrap(champion_right: np.ndarray, challenger_right: np.ndarray, seed: int,
                     n_boot: int = BOOTSTRAP) -> tuple[float, float]:
    """95% percentile interval of accuracy(champion) - accuracy(challenger), rows resampled in pairs."""
    rng = np.random.default_rng(seed)
    difference = champion_right.astype(float) - challenger_right.astype(float)
    n = len(difference)
    means = np.array([difference[rng.integers(0, n, n)].mean() for _ in range(n_boot)])
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def compare_with_challenger(run_dir: str, files: dict[str, str], seed: int) -> dict:
    """Train the challenger on the training split; both models' validation metrics and where they disagree."""
    champion = load_run_model(files["model"])
    train, val = read_split(files["train"]), read_split(files["validation"])
    ours = champion.predict_proba(val.inputs).argmax(1)
    given = json.loads(Path(files["run_record"]).read_text()).get("challenger")
    written = {}
    if given:
        copy = write_bytes_atomic(layout.path(run_dir, "challenger_model"), Path(given).read_bytes())
        theirs = owner_challenger(copy, val.inputs, val.feature_names, len(val.class_names)).argmax(1)
        description = f"model supplied by the owner ({Path(given).name}, {detect_format(copy)})"
        written["challenger_model"] = file_ref(copy)
    else:
        scaler, challenger = fit_challenger(train.inputs, train.labels, seed)
        theirs = challenger.predict(scaler.transform(challenger_features(val.inputs)))
        description = DESCRIPTION[val.modality]
        written["challenger_weights"] = save_challenger(layout.path(run_dir, "challenger_weights"), scaler, challenger,
                                                        description)
    right, their_right = ours == val.labels, theirs == val.labels
    low, high = paired_bootstrap(right, their_right, seed)
    margin = threshold(files["card_record"], "challenger.margin")
    metrics = [{"model": name, "accuracy": float(np.mean(pred == val.labels)),
                "f1_macro": float(f1_score(val.labels, pred, average="macro", zero_division=0))}
               for name, pred in (("champion", ours), ("challenger", theirs))]
    difference = metrics[0]["accuracy"] - metrics[1]["accuracy"]
    check = Check("challenger.margin", "Challenger", "accuracy over the challenger (upper 95% bound)", high, margin,
                  "at least", SECTION_PERFORMANCE,
                  f"The model is less accurate than its challenger ({description}): accuracy "
                  f"difference {difference:+.3f} (95% CI {low:+.3f} to {high:+.3f}).")
    rows = pd.DataFrame({"source_id": val.source_ids, "label": val.labels, "champion": ours, "challenger": theirs})
    written["challenger"] = write_frame(layout.path(run_dir, "challenger"), rows)
    return {"files": written, "checks": [check.to_json()], "metrics": metrics, "difference": difference,
            "ci": [low, high], "description": description, "owner_supplied": bool(given),
            "counts": {"both right": int((right & their_right).sum()),
                       "only the model under validation right": int((right & ~their_right).sum()),
                       "only the challenger right": int((~right & their_right).sum()),
                       "both wrong": int((~right & ~their_right).sum())},
            "disagreement": float(np.mean(ours != theirs)), "n_rows": len(val.labels)}


def save_challenger(path: Path, scaler: StandardScaler, challenger: LogisticRegression, description: str) -> dict:
    """The built-in challenger as safetensors: coefficients, intercepts and standardisation (float64)."""
    weights = {name: torch.from_numpy(np.ascontiguousarray(value, dtype=np.float64))
               for name, value in (("coef", challenger.coef_), ("intercept", challenger.intercept_),
                                   ("mean", scaler.mean_), ("scale", scaler.scale_))}
    with atomic_path(path) as tmp:
        save_file(weights, str(tmp), metadata={"model": description})
    return file_ref(path)


def challenger_section(data: ReportData, result: dict) -> dict:
    rows = pd.read_parquet(file_of(result, "challenger"))
    figure = validator_figures.challenger_bars(rows, data.names, data.figure("challenger.png"))
    return {**{k: v for k, v in result.items() if k not in ("files", "checks")}, "figure": data.rel(figure)}
