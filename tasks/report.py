"""Step 4, report: figures and a PDF compliance report from the run's Parquet files, then the manifest."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from tasks import figures
from tasks.artifacts import (ATTACHMENTS, MANIFEST_NAME, PRE_MANIFEST_NAME, build_manifest, sha256_file,
                             write_json_atomic, write_manifest)
from tasks.explain import read_shap_values, shard_workers
from tasks import report_sections as sections
from tasks.inspect_weights import NEAR_ZERO, first_conv_filters, weight_histograms, write_weight_statistics
from tasks.load import read_split
from tasks.model import CNNConfig, load_weights
from tasks.model_card import store_model_card
from tasks.render import RunFilesFetcher, render_pdf

ADDITIVITY_THRESHOLD = 1e-4  # on probabilities; larger residuals are flagged in the report (DeepSHAP, Kernel SHAP)
IG_THRESHOLD = 0.05  # IG's completeness error is the error of a 64-point path integral: a looser bound
MAX_SAMPLE_IMAGES = 8
REASONS_SHOWN = 3  # features named in a table row's reason codes
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


def describe_table_mistake(values: np.ndarray, row: np.ndarray, true: int, pred: int, names: list[str],
                           probs: np.ndarray, feature_names: list[str]) -> str:
    """One paragraph, in words, on which feature values pushed a table row to the wrong class."""
    towards = sections.reason_codes(values[pred], row, feature_names, REASONS_SHOWN)
    against = sections.reason_codes(-values[true], row, feature_names, REASONS_SHOWN)
    return (f"The model gave '{names[pred]}' probability {probs[pred]:.2f} and the true class '{names[true]}' "
            f"{probs[true]:.2f}. Pushing towards '{names[pred]}': {'; '.join(towards) or 'no feature'}. "
            f"Lowering '{names[true]}' (SHAP values shown for '{names[true]}' with their sign flipped): "
            f"{'; '.join(against) or 'no feature'}.")


def model_description(config) -> str:
    if isinstance(config, CNNConfig):
        return (f"Reference CNN: {len(config.widths)} conv layers, {config.num_classes} classes, "
                f"{config.in_channels} input channel(s)")
    return (f"Reference MLP: standardisation, Dense {config.hidden} + ReLU, Dense {config.num_classes}; "
            f"{config.in_features} features")


def feature_summary(split) -> list[dict]:
    """Per feature column of a table split: mean, standard deviation, minimum and maximum."""
    x = split.inputs.astype(np.float64)
    return [{"name": name, "mean": float(x[:, j].mean()), "std": float(x[:, j].std()), "min": float(x[:, j].min()),
             "max": float(x[:, j].max())} for j, name in enumerate(split.feature_names)]


def render_report(run_dir: Path, load: dict, train: dict, explain: dict, params: dict, environment: dict,
                  flow_run: dict, analyses: dict | None = None, fetcher: RunFilesFetcher | None = None) -> dict:
    """Make the figures, render ``report.pdf`` and write ``manifest.json``; return their paths and hashes.

    `analyses` holds the results of the optional technique steps (gradients, permutation,
    partial_dependence, kernel_shap, lime, slices, agreement); a missing one leaves its section out.
    `fetcher` (default: a fresh one for `run_dir`) is the only way the renderer reads files.
    """
    analyses = analyses or {}
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
    val_pred = pd.read_parquet(explain["predictions"]["path"])["predicted"].to_numpy()  # validation order

    is_table = train_split.modality == "table"
    figs = {
        "samples": None if is_table else figures.sample_grid(train_split.inputs, train_split.labels, names,
                                                             fig_dir / "samples.png", MAX_SAMPLE_IMAGES),
        "curves": figures.training_curves(metrics, fig_dir / "training_curves.png"),
        "confusion": figures.confusion_matrix(val_split.labels, val_pred, names, fig_dir / "confusion_matrix.png"),
        "weights": weight_histograms(model, fig_dir / "weight_histograms.png"),
        "filters": None if is_table else first_conv_filters(model, fig_dir / "first_conv_filters.png"),
        "additivity": figures.additivity_histogram(explained["additivity_error"].to_numpy(), ADDITIVITY_THRESHOLD,
                                                   fig_dir / "additivity.png"),
    }
    source_index = {sid: i for i, sid in enumerate(val_split.source_ids)}
    cases = []
    for row in explained.itertuples(index=False):
        x = val_split.inputs[source_index[row.source_id]]
        probs = np.asarray(row.probabilities)
        path = fig_dir / f"shap_{row.position:04d}.png"
        if is_table:
            title = f"{row.source_id}: SHAP values for '{names[row.predicted]}' ({probs[row.predicted]:.2f})"
            figures.feature_bars(values[row.position, row.predicted], val_split.feature_names, title, path)
        else:
            titles = [f"{name[:12]} {probs[k]:.2f}" for k, name in enumerate(names)]
            heading = f"true {names[row.label][:12]}\npred {names[row.predicted][:12]}"
            figures.shap_image_plot(x, values[row.position], titles, path, heading)
        case = {
            "position": row.position, "source_id": row.source_id, "true": names[row.label],
            "predicted": names[row.predicted], "confidence": float(row.confidence),
            "correct": row.label == row.predicted, "additivity_error": float(row.additivity_error),
            "figure": path.relative_to(run_dir).as_posix(),
        }
        case["reasons"] = (sections.reason_codes(values[row.position, row.predicted], x, val_split.feature_names)
                           if is_table else [])
        if not case["correct"]:
            case["narrative"] = (
                describe_table_mistake(values[row.position], x, row.label, row.predicted, names, probs,
                                       val_split.feature_names) if is_table else
                describe_mistake(values[row.position], row.label, row.predicted, names, probs, expected))
        cases.append(case)

    last_val = per_class[(per_class["split"] == "validation") & (per_class["epoch"] == per_class["epoch"].max())]
    final = train["final_validation"]
    errors = explained["additivity_error"].to_numpy()
    context = {
        "title": {
            "model": model_description(model_config),
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
            "samples": figs["samples"].relative_to(run_dir).as_posix() if figs["samples"] else None,
            "features": feature_summary(train_split) if is_table else [],
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
            "filters": figs["filters"].relative_to(run_dir).as_posix() if figs["filters"] else None,
        },
        "validation": {
            "classes": last_val.to_dict("records"),
            "confusion": figs["confusion"].relative_to(run_dir).as_posix(),
            "final": final,
        },
        "cases": cases,
        "gradients": sections.gradient_section(run_dir, analyses["gradients"], val_split, names)
                     if "gradients" in analyses else None,
        "permutation": sections.permutation_section(run_dir, analyses["permutation"])
                       if "permutation" in analyses else None,
        "global_shap": sections.global_shap_section(run_dir, values, val_split),
        "partial_dependence": sections.partial_dependence_section(run_dir, analyses.get("partial_dependence"), names),
        "local_methods": sections.local_methods_section(run_dir, analyses["kernel_shap"], analyses["lime"], val_split,
                                                        explained, names)
                         if "kernel_shap" in analyses and "lime" in analyses else None,
        "slices": sections.slices_section(run_dir, analyses["slices"]) if "slices" in analyses else None,
        "agreement": sections.agreement_section(run_dir, analyses["agreement"]) if "agreement" in analyses else None,
        "faithfulness": sections.faithfulness_section(run_dir, analyses.get("faithfulness")),
        "comparison": sections.comparison_section(analyses.get("comparison")),
        "model_card": analyses.get("model_card") or store_model_card(None, run_dir),
        "ig_threshold": IG_THRESHOLD,
        "quality": {
            "max": float(errors.max()), "mean": float(errors.mean()), "threshold": ADDITIVITY_THRESHOLD,
            "over": int((errors > ADDITIVITY_THRESHOLD).sum()),
            "histogram": figs["additivity"].relative_to(run_dir).as_posix(), "expected": expected,
        },
        "appendix": {
            "parameters": params, "environment": environment, "flow_run": flow_run,
            "attachments": ATTACHMENTS, "shard_workers": shard_workers(run_dir),
        },
        "class_names": names,
        "modality": train_split.modality,
    }
    context["limitations"] = sections.limitations(context["model_card"], context["slices"], context["agreement"],
                                                  context["faithfulness"], context["quality"], context["comparison"])
    # Every file so far (figures included), hashed: the PDF embeds this list; manifest.json, written
    # after the PDF, adds the PDF itself.
    pre_manifest = build_manifest(run_dir, {"parameters": params, "flow_run": flow_run},
                                  exclude=(MANIFEST_NAME, PRE_MANIFEST_NAME, "report.pdf"))
    write_json_atomic(run_dir / PRE_MANIFEST_NAME, pre_manifest)
    context["appendix"]["artifacts"] = [{"path": p, **info} for p, info in pre_manifest["files"].items()]
    pdf = render_pdf("report.html.j2", context, run_dir, run_dir / "report.pdf", fetcher=fetcher,
                     attachments=ATTACHMENTS)
    manifest = write_manifest(run_dir, {"parameters": params, "environment": environment, "flow_run": flow_run})
    return {"pdf": {"path": str(pdf), "sha256": sha256_file(pdf)},
            "manifest": {"path": str(run_dir / MANIFEST_NAME), "sha256": sha256_file(manifest)}}
