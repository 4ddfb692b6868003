"""Inspection of layer weights and biases: per-tensor statistics (the figures are in tasks/report/figures.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from torch import nn

from tasks.model.reference import load_weights
from tasks.report import figures
from tasks.report.sections import ReportData, file_of
from tasks.run import layout
from tasks.run.formats import write_frame

NEAR_ZERO = 1e-3  # |w| below this counts as near zero


def weight_statistics(model: nn.Module) -> pd.DataFrame:
    """One row per parameter tensor: shape, mean, std, min, max, share near zero, L1 and L2 norms."""
    rows = []
    for name, parameter in model.named_parameters():
        values = parameter.detach().cpu().double().numpy().ravel()
        layer, _, kind = name.rpartition(".")
        rows.append({
            "layer": layer, "module": type(model.get_submodule(layer)).__name__, "tensor": kind,
            "shape": "x".join(map(str, parameter.shape)), "count": values.size,
            "mean": values.mean(), "std": values.std(), "min": values.min(), "max": values.max(),
            "near_zero_share": float((np.abs(values) < NEAR_ZERO).mean()),
            "l1_norm": float(np.abs(values).sum()), "l2_norm": float(np.sqrt((values ** 2).sum())),
        })
    return pd.DataFrame(rows)


def inspect_weights(run_dir: str, files: dict[str, str], seed: int) -> dict:
    """Statistics of every parameter tensor of the model, written to ``inspect/weights.parquet``."""
    model, _, _ = load_weights(files["weights"])
    stats = weight_statistics(model)
    return {"files": {"weight_statistics": write_frame(layout.path(run_dir, "weight_statistics"), stats)},
            "checks": [], "near_zero": NEAR_ZERO}


def weights_section(data: ReportData, result: dict) -> dict:
    """Every parameter tensor's statistics, weight histograms, and (CNN) the first layer's filters."""
    table = pd.read_parquet(file_of(result, "weight_statistics"))
    histograms = figures.weight_histograms(data.model, data.figure("weight_histograms.png"))
    filters = (figures.first_conv_filters(data.model, data.figure("first_conv_filters.png"))
               if data.modality == "image" else None)
    return {"table": table.to_dict("records"), "near_zero": result["near_zero"], "histograms": data.rel(histograms),
            "filters": data.rel(filters) if filters else None}
