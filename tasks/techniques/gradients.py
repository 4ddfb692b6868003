"""Gradient feature attribution with captum: saliency and Integrated Gradients of the predicted class.

File ``attributions/gradients.parquet``, one row per explained row (the SHAP stage's rows, same
positions): position, source_id, class_index (the predicted class), saliency and
integrated_gradients (fixed_size_list<float32>[C*H*W]), ig_completeness_error (|sum of IG -
(output - output at the baseline)|). Baseline: the mean background image, SHAP's reference.
"""

from __future__ import annotations


import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from captum.attr import IntegratedGradients, Saliency

from tasks.model.run_model import load_run_model
from tasks.report import figures
from tasks.report.narrative import row_labels
from tasks.report.sections import MAX_MAP_ROWS, ReportData, file_of
from tasks.run import layout
from tasks.run.artifacts import write_parquet_atomic
from tasks.run.checks import SECTION_QUALITY, Check
from tasks.run.formats import background_images, file_ref, float32_column, read_split

IG_STEPS = 64  # Gauss-Legendre points along the path from the baseline to the image
IG_THRESHOLD = 0.05  # IG's completeness error is the error of a 64-point path integral: a looser bound than SHAP's


def integrated_gradients(model: torch.nn.Module, images: torch.Tensor, baseline: torch.Tensor,
                         targets: torch.Tensor, steps: int = IG_STEPS) -> tuple[np.ndarray, np.ndarray]:
    """IG attributions (n, *input) and each image's completeness error (n,)."""
    ig = IntegratedGradients(model)
    attributions, delta = ig.attribute(images, baselines=baseline.expand_as(images), target=targets,
                                       n_steps=steps, method="gausslegendre", return_convergence_delta=True)
    return attributions.detach().numpy(), delta.detach().abs().numpy()


def saliency(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """|d output / d input| of the target class (n, *input)."""
    return Saliency(model).attribute(images, target=targets, abs=True).detach().numpy()


def gradient_attributions(run_dir: str, files: dict[str, str], seed: int, ig_steps: int = IG_STEPS) -> dict:
    """Saliency and IG of the predicted class for the rows the SHAP stage chose; write Parquet; check completeness."""
    model = load_run_model(files["model"])
    prob_model = model.probability_module()
    val = read_split(files["validation"])
    explained = pq.read_table(files["explained"]).to_pandas()
    baseline = torch.from_numpy(background_images(files["background"]).mean(0))
    images = torch.from_numpy(val.rows_of(explained["source_id"]))
    targets = torch.from_numpy(explained["predicted"].to_numpy().copy())
    ig, errors = integrated_gradients(prob_model, images, baseline[None], targets, ig_steps)
    sal = saliency(prob_model, images.clone().requires_grad_(True), targets)
    table = pa.table({
        "position": pa.array(explained["position"].to_numpy(), type=pa.int32()),
        "source_id": explained["source_id"].tolist(),
        "class_index": pa.array(targets.numpy(), type=pa.int32()),
        "saliency": float32_column(sal), "integrated_gradients": float32_column(ig),
        "ig_completeness_error": pa.array(errors.astype(np.float64)),
    })
    path = write_parquet_atomic(layout.path(run_dir, "gradients"), table)
    check = Check("integrated-gradients.completeness", "Integrated Gradients", "completeness (largest error)", float(errors.max()), IG_THRESHOLD, "at most",
                  SECTION_QUALITY, f"Integrated Gradients' completeness error ({errors.max():.2e}) exceeds "
                  f"{IG_THRESHOLD:g}: its maps do not account for the whole change in output.")
    return {"files": {"gradients": file_ref(path)}, "checks": [check.to_json()], "steps": ig_steps,
            "max_ig_completeness_error": float(errors.max()), "mean_ig_completeness_error": float(errors.mean())}


def gradient_section(data: ReportData, result: dict) -> dict:
    """Saliency and IG maps (images) or an IG heatmap (tables), and IG's completeness."""
    split, names = data.validation, data.names
    table = pq.read_table(file_of(result, "gradients")).to_pandas()
    shape = split.inputs.shape[1:]
    shown = table.head(MAX_MAP_ROWS)
    ig = np.stack(table["integrated_gradients"].to_numpy()).reshape(-1, *shape)
    labels = row_labels(table.rename(columns={"class_index": "predicted"}), names)
    if split.modality == "table":
        figure = figures.attribution_heatmap(ig, labels, split.feature_names, data.figure("gradients.png"),
                                             "Integrated Gradients of the predicted class")
    else:
        figure = figures.gradient_grid(
            split.rows_of(shown["source_id"]),
            np.stack(shown["saliency"].to_numpy()).reshape(-1, *shape), ig[: len(shown)],
            [f"{sid[:22]}\nclass {figures.short_labels(names, 12)[k]}"
             for sid, k in zip(shown["source_id"], shown["class_index"])],
            data.figure("gradients.png"))
    return {"figure": data.rel(figure), "max": result["max_ig_completeness_error"],
            "mean": result["mean_ig_completeness_error"], "n": len(table),
            "shown": len(shown) if split.modality == "image" else len(table), "steps": result["steps"]}
