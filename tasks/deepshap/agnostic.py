"""The SHAP stage's model-agnostic engine, for models without an exact DeepSHAP graph (a tree ensemble in ONNX,
a graph with an operation DeepSHAP has no rule for): Kernel SHAP (shap.KernelExplainer) over groups of inputs.

Players are the table's columns, or for images the patches of a GRID x GRID grid. An absent player
takes each background row's values in turn and the model's probabilities are averaged over the
background, so the values add up to f(x) - E_background[f]: the expected value of the stage's plan,
as DeepSHAP's. A patch's value is spread evenly over its pixels, so the per-pixel values add up too.
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import torch

from tasks.techniques.groups import KERNEL_GRID, feature_columns, image_regions

GRID = KERNEL_GRID  # images: a 4x4 grid, 16 patches (one grid for every Kernel SHAP of a run)
N_SAMPLES = 512  # coalitions per explained row (all of them when there are fewer)
CHUNK_VALUES = 1 << 23  # inputs evaluated at once: coalitions x background x input size


def kernel_engine(predict: Callable[[np.ndarray], np.ndarray], background: torch.Tensor, seed: int,
                  feature_names: list[str] | None = None):
    """Kernel SHAP as a function of a batch of rows: (n, K, *input_shape) float32 values."""
    bg = background.detach().cpu().double().numpy()
    shape = bg.shape[1:]
    groups = feature_columns(feature_names or [str(i) for i in range(shape[0])]) if len(shape) == 1 \
        else image_regions(tuple(shape), GRID)
    masks = groups.masks.astype(np.float64)  # (G, D)
    flat_bg = bg.reshape(len(bg), -1)

    def explain(rows: torch.Tensor) -> np.ndarray:
        import shap

        out = []
        for x in rows.detach().cpu().double().numpy().reshape(len(rows), -1):
            def averaged(z: np.ndarray, x=x) -> np.ndarray:  # (m, G) coalitions -> (m, K) mean over the background
                keep = np.clip(z @ masks, 0, 1)  # (m, D)
                step = max(1, CHUNK_VALUES // (len(flat_bg) * flat_bg.shape[1]))
                parts = []
                for start in range(0, len(keep), step):
                    k = keep[start : start + step, None]
                    inputs = (k * x + (1 - k) * flat_bg[None]).reshape(-1, *shape).astype(np.float32)
                    parts.append(predict(inputs).reshape(len(k), len(flat_bg), -1).mean(1))
                return np.concatenate(parts)

            explainer = shap.KernelExplainer(averaged, np.zeros((1, masks.shape[0])))
            np.random.seed(seed % 2**32)  # shap samples coalitions from numpy's global generator
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                phi = np.asarray(explainer.shap_values(np.ones((1, masks.shape[0])), nsamples=N_SAMPLES,
                                                       l1_reg=False, silent=True))[0].T  # (K, G)
            per_input = phi @ (masks / masks.sum(1, keepdims=True))  # each group's value spread over its inputs
            out.append(per_input.reshape(len(phi), *shape))
        return np.stack(out).astype(np.float32)

    return explain
