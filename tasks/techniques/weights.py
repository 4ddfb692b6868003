"""Inspection of layer weights and biases: per-tensor statistics (the figures are in tasks/report/figures.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from torch import nn

from tasks.model.run_model import load_run_model
from tasks.report import figures
from tasks.report.sections import ReportData, file_of
from tasks.run import layout
from tasks.run.formats import write_frame

NEAR_ZERO = 1e-3  # |w| below this counts as near zero
MAX_ROWS_SHOWN = 60  # tensors listed in the report; the Parquet file has them all


def weight_statistics(parameters: dict[str, np.ndarray], modules: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per floating-point parameter tensor: shape, mean, std, min, max, share near zero, L1 and L2
    norms. `modules` names each layer's module type, where the model file says it."""
    rows = []
    for name, parameter in parameters.items():
        if not np.issubdtype(parameter.dtype, np.floating) or parameter.size == 0:
            continue  # integer buffers (batch norm's counters), empty tensors
        values = parameter.astype(np.float64).ravel()
        layer, _, kind = name.rpartition(".")
        rows.append({
            "layer": layer, "module": (modules or {}).get(layer, "-"), "tensor": kind or name,
            "shape": "x".join(map(str, parameter.shape)), "count": values.size,
            "mean": values.mean(), "std": values.std(), "min": values.min(), "max": values.max(),
            "near_zero_share": float((np.abs(values) < NEAR_ZERO).mean()),
            "l1_norm": float(np.abs(values).sum()), "l2_norm": float(np.sqrt((values ** 2).sum())),
        })
    return pd.DataFrame(rows)


def inspect_weights(run_dir: str, files: dict[str, str], seed: int) -> dict:
    """Statistics of every parameter tensor of the model, written to ``inspect/weights.parquet``."""
    model = load_run_model(files["model"])
    module = model.file.module
    trainable = dict(module.named_parameters()) if model.record["source"] == "trained" else None
    parameters = {name: value for name, value in model.file.parameters.items()
                  if trainable is None or name in trainable}  # trained here: its parameters, not its buffers
    modules = ({name: type(m).__name__ for name, m in module.named_modules()} if isinstance(module, nn.Module)
               else {})
    stats = weight_statistics(parameters, modules)
    return {"files": {"weight_statistics": write_frame(layout.path(run_dir, "weight_statistics"), stats)},
            "checks": [], "near_zero": NEAR_ZERO}


def weights_section(data: ReportData, result: dict) -> dict:
    """Every parameter tensor's statistics, weight histograms, and (CNN) the first layer's filters."""
    table = pd.read_parquet(file_of(result, "weight_statistics"))
    layers = {name: data.model.file.parameters[name] for name in data.model.layer_weights()}
    histograms = figures.weight_histograms(layers, data.figure("weight_histograms.png")) if layers else None
    kernels = [value for value in layers.values() if value.ndim == 4]
    filters = (figures.first_conv_filters(kernels[0], data.figure("first_conv_filters.png"))
               if data.modality == "image" and kernels else None)
    return {"table": table.head(MAX_ROWS_SHOWN).to_dict("records"), "more": max(0, len(table) - MAX_ROWS_SHOWN),
            "near_zero": result["near_zero"],
            "histograms": data.rel(histograms) if histograms else None,
            "filters": data.rel(filters) if filters else None}
