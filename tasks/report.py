"""Step 4, report: figures and a PDF compliance report from the run's Parquet files, then the manifest."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from tasks import figures
from tasks.artifacts import MANIFEST_NAME, build_manifest, sha256_file, write_manifest
from tasks.explain import read_shap_values
from tasks.gradients import IG_STEPS
from tasks.inspect_weights import NEAR_ZERO, first_conv_filters, weight_histograms, write_weight_statistics
from tasks.load import read_split
from tasks.model import load_weights
from tasks.render import RunFilesFetcher, render_pdf
from tasks.train import predict_logits

ADDITIVITY_THRESHOLD = 1e-4  # on probabilities; larger residuals are flagged in the report
MAX_SAMPLE_IMAGES = 8
REGIONS = [["upper left", "upper centre", "upper right"], ["middle left", "centre", "middle right"],
           ["lower left", "lower centre", "lower right"]]


def describe_mistake(values: np.ndarray, true: int, pred: int, names: list[str], probs: np.ndarray,
                     expected: list[float]) -> str:
    """One paragraph, in words, on what the SHAP maps show for a misclassified image."""
    maps = values.sum(1)  # (K, H, W)
    pred_map = maps[pred]
    positive = np.clip(pred_map, 0, None)
    h, w = pred_map.shape
    cells = np.array([[positive[i * h // 3:(i + 1) * h // 3, j * w // 3:(j + 1) * w // 3].sum() for j in range(3)]
                      for i in range(3)])
    share = cells.max() / positive.sum() if positive.sum() > 0 else 0.0
    i, j = np.unravel_index(cells.argmax(), cells.shape)
    return (
        f"The model gave '{names[pred]}' probability {probs[pred]:.2f} (background average "
        f"{expected[pred]:.2f}) and the true class '{names[true]}' {probs[true]:.2f} (average {expected[true]:.2f}). "
        f"The pixels that pushed it towards '{names[pred]}' lie mostly in the {REGIONS[i][j]} of the image "
        f"({share:.0%} of the positive attribution); the net SHAP sum for '{names[true]}' is "
        f"{maps[true].sum():+.3f}, for '{names[pred]}' {pred_map.sum():+.3f}."
    )


MAX_GRADIENT_ROWS = 8  # images shown in the gradient attribution figure


def gradient_section(run_dir: Path, gradients: dict, val_split, names: list[str]) -> dict:
    """The report's gradient attribution part: a figure of saliency and IG maps, and IG's completeness."""
    table = pq.read_table(gradients["gradients"]["path"]).to_pandas()
    shape = val_split.inputs.shape[1:]
    index = {sid: i for i, sid in enumerate(val_split.source_ids)}
    shown = table.head(MAX_GRADIENT_ROWS)
    figure = figures.gradient_grid(
        val_split.inputs[[index[s] for s in shown["source_id"]]],
        np.stack(shown["saliency"].to_numpy()).reshape(-1, *shape),
        np.stack(shown["integrated_gradients"].to_numpy()).reshape(-1, *shape),
        [f"{sid[:22]}\nclass {names[k][:12]}" for sid, k in zip(shown["source_id"], shown["class_index"])],
        run_dir / "figures" / "gradients.png")
    errors = table["ig_completeness_error"].to_numpy()
    return {"figure": figure.relative_to(run_dir).as_posix(), "max": float(errors.max()),
            "mean": float(errors.mean()), "n": len(table), "shown": len(shown), "steps": IG_STEPS}


def render_report(run_dir: Path, load: dict, train: dict, explain: dict, params: dict, environment: dict,
                  flow_run: dict, gradients: dict | None = None, fetcher: RunFilesFetcher | None = None) -> dict:
    """Make the figures, render ``report.pdf`` and write ``manifest.json``; return their paths and hashes.

    `fetcher` (default: a fresh one for `run_dir`) is the only way the renderer reads files.
    """
    run_dir = Path(run_dir)
    fig_dir = run_dir / "figures"
    train_split = read_split(Path(load["train"]["path"]))
    val_split = read_split(Path(load["validation"]["path"]))
    names = train_split.class_names
    metrics = pd.read_parquet(train["metrics"]["path"])
    per_class = pd.read_parquet(train["metrics_per_class"]["path"])
    explained = pd.read_parquet(explain["explained"]["path"])
    values, values_meta = read_shap_values(Path(explain["shap_values"]["path"]))
    expected = json.loads(values_meta["accountability.expected_values"])

    model, model_config, training = load_weights(Path(train["weights"]["path"]))
    weight_stats = write_weight_statistics(model, run_dir / "inspect" / "weights.parquet")
    val_pred = predict_logits(model, val_split.inputs).argmax(1).numpy()

    figs = {
        "samples": figures.sample_grid(train_split.inputs, train_split.labels, names, fig_dir / "samples.png",
                                       MAX_SAMPLE_IMAGES),
        "curves": figures.training_curves(metrics, fig_dir / "training_curves.png"),
        "confusion": figures.confusion_matrix(val_split.labels, val_pred, names, fig_dir / "confusion_matrix.png"),
        "weights": weight_histograms(model, fig_dir / "weight_histograms.png"),
        "filters": first_conv_filters(model, fig_dir / "first_conv_filters.png"),
        "additivity": figures.additivity_histogram(explained["additivity_error"].to_numpy(), ADDITIVITY_THRESHOLD,
                                                   fig_dir / "additivity.png"),
    }
    source_index = {sid: i for i, sid in enumerate(val_split.source_ids)}
    cases = []
    for row in explained.itertuples(index=False):
        image = val_split.inputs[source_index[row.source_id]]
        probs = np.asarray(row.probabilities)
        titles = [f"{name[:12]} {probs[k]:.2f}" for k, name in enumerate(names)]
        heading = f"true {names[row.label][:12]}\npred {names[row.predicted][:12]}"
        path = figures.shap_image_plot(image, values[row.position], titles,
                                       fig_dir / f"shap_{row.position:04d}.png", heading)
        case = {
            "position": row.position, "source_id": row.source_id, "true": names[row.label],
            "predicted": names[row.predicted], "confidence": float(row.confidence),
            "correct": row.label == row.predicted, "additivity_error": float(row.additivity_error),
            "figure": path.relative_to(run_dir).as_posix(),
        }
        if not case["correct"]:
            case["narrative"] = describe_mistake(values[row.position], row.label, row.predicted, names, probs, expected)
        cases.append(case)

    last_val = per_class[(per_class["split"] == "validation") & (per_class["epoch"] == per_class["epoch"].max())]
    final = train["final_validation"]
    errors = explained["additivity_error"].to_numpy()
    context = {
        "title": {
            "model": f"Reference CNN: {len(model_config.widths)} conv layers, {model_config.num_classes} classes, "
                     f"{model_config.in_channels} input channel(s)",
            "dataset": load["dataset"], "run_id": run_dir.name,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "flow_run_id": flow_run.get("id") or "not run under Prefect",
        },
        "summary": {
            "accuracy": final["accuracy"], "f1_macro": final["f1_macro"], "n_classes": len(names),
            "n_train": int(sum(load["train"]["class_counts"])),
            "n_validation": int(sum(load["validation"]["class_counts"])),
            "epochs": params["epochs"], "n_explained": len(cases),
            "n_misclassified": sum(not c["correct"] for c in cases),
            "max_additivity": float(errors.max()), "threshold": ADDITIVITY_THRESHOLD,
            "engine": explain["engine"], "device": explain["device"], "background": params["background"],
            "weakest_class": last_val.sort_values("f1").iloc[0]["class_name"],
        },
        "data": {
            "classes": [{"name": n, "train": t, "validation": v}
                        for n, t, v in zip(names, load["train"]["class_counts"], load["validation"]["class_counts"])],
            "input_shape": load["input_shape"], "provenance": load["provenance"],
            "samples": figs["samples"].relative_to(run_dir).as_posix(),
        },
        "training": {
            "curves": figs["curves"].relative_to(run_dir).as_posix(),
            "epochs": metrics.pivot(index="epoch", columns="split", values=["loss", "accuracy"]).reset_index()
                             .to_dict("records"),
            "settings": training,
        },
        "weights": {
            "table": weight_stats.to_dict("records"), "near_zero": NEAR_ZERO,
            "histograms": figs["weights"].relative_to(run_dir).as_posix(),
            "filters": figs["filters"].relative_to(run_dir).as_posix(),
        },
        "validation": {
            "classes": last_val.to_dict("records"),
            "confusion": figs["confusion"].relative_to(run_dir).as_posix(),
            "final": final,
        },
        "cases": cases,
        "gradients": gradient_section(run_dir, gradients, val_split, names) if gradients else None,
        "quality": {
            "max": float(errors.max()), "mean": float(errors.mean()), "threshold": ADDITIVITY_THRESHOLD,
            "over": int((errors > ADDITIVITY_THRESHOLD).sum()),
            "histogram": figs["additivity"].relative_to(run_dir).as_posix(), "expected": expected,
        },
        "appendix": {
            "parameters": params, "environment": environment, "flow_run": flow_run,
            "artifacts": [{"path": p, **info} for p, info in build_manifest(run_dir)["files"].items()],
        },
        "class_names": names,
    }
    pdf = render_pdf("report.html.j2", context, run_dir, run_dir / "report.pdf", fetcher=fetcher)
    manifest = write_manifest(run_dir, {"parameters": params, "environment": environment, "flow_run": flow_run})
    return {"pdf": {"path": str(pdf), "sha256": sha256_file(pdf)},
            "manifest": {"path": str(run_dir / MANIFEST_NAME), "sha256": sha256_file(manifest)}}
