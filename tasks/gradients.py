"""Gradient feature attribution with captum: saliency and Integrated Gradients of the predicted class.

File ``explain/gradients.parquet``, one row per explained image (the explain step's images, same
positions): position, source_id, class_index (the predicted class), saliency and
integrated_gradients (fixed_size_list<float32>[C*H*W]), ig_completeness_error (|sum of IG -
(output - output at the baseline)|). Baseline: the mean background image, SHAP's reference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from captum.attr import IntegratedGradients, Saliency

from tasks.artifacts import sha256_file, write_parquet_atomic
from tasks.explain import background_images
from tasks.load import read_split
from tasks.model import load_weights, probabilities

IG_STEPS = 64  # Gauss-Legendre points along the path from the baseline to the image


def integrated_gradients(model: torch.nn.Module, images: torch.Tensor, baseline: torch.Tensor,
                         targets: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """IG attributions (n, *input) and each image's completeness error (n,)."""
    ig = IntegratedGradients(model)
    attributions, delta = ig.attribute(images, baselines=baseline.expand_as(images), target=targets,
                                       n_steps=IG_STEPS, method="gausslegendre", return_convergence_delta=True)
    return attributions.detach().numpy(), delta.detach().abs().numpy()


def saliency(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """|d output / d input| of the target class (n, *input)."""
    return Saliency(model).attribute(images, target=targets, abs=True).detach().numpy()


def gradient_attributions(weights_path: Path, validation_path: Path, explained_path: Path, background_path: Path,
                          run_dir: Path) -> dict:
    """Saliency and IG of the predicted class for the images the explain step chose; write Parquet."""
    model, _, _ = load_weights(Path(weights_path))
    prob_model = probabilities(model).eval()
    val = read_split(Path(validation_path))
    explained = pq.read_table(explained_path).to_pandas()
    baseline = torch.from_numpy(background_images(Path(background_path)).mean(0))
    index = {sid: i for i, sid in enumerate(val.source_ids)}
    images = torch.from_numpy(val.inputs[[index[s] for s in explained["source_id"]]])
    targets = torch.from_numpy(explained["predicted"].to_numpy().copy())
    ig, errors = integrated_gradients(prob_model, images, baseline[None], targets)
    sal = saliency(prob_model, images.clone().requires_grad_(True), targets)
    size = int(np.prod(images.shape[1:]))

    def column(values: np.ndarray) -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(pa.array(values.astype(np.float32).reshape(-1)), size)

    table = pa.table({
        "position": pa.array(explained["position"].to_numpy(), type=pa.int32()),
        "source_id": explained["source_id"].tolist(),
        "class_index": pa.array(targets.numpy(), type=pa.int32()),
        "saliency": column(sal), "integrated_gradients": column(ig),
        "ig_completeness_error": pa.array(errors.astype(np.float64)),
    })
    path = write_parquet_atomic(Path(run_dir) / "explain" / "gradients.parquet", table)
    return {"gradients": {"path": str(path), "sha256": sha256_file(path)},
            "max_ig_completeness_error": float(errors.max())}
