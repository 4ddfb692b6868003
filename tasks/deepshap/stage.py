"""The SHAP stage: DeepSHAP values of the model's class probabilities for chosen validation rows.

The stage is three parts, so that its costly middle can be spread over workers (flows/deepshap.py):
plan (choose rows, predict) -> shards (SHAP values of a few rows each, independent) -> merge.

Files (in ``deepshap/``, see tasks/run/layout.py):
- ``plan.parquet``: the rows to explain, as ``explained.parquet`` below without additivity_error, plus
  inputs; metadata ``accountability.expected_values`` (JSON, per class), ``accountability.input_shape``
  and ``accountability.engine``.
- ``background.parquet``: source_id and inputs of each background image (same metadata).
- ``shards/shard-START-STOP.parquet``: one shard's rows of ``shap_values.parquet``, and the device and
  worker (host:pid) that computed them.
- ``shap_values.parquet``: one row per (explained image, class): position, source_id,
  class_index, values (fixed_size_list<float32>[C*H*W], same layout as the image).
  Metadata: the plan's, and ``accountability.device`` (the shards' devices).
- ``explained.parquet``: one row per explained image: position, source_id, label, predicted,
  confidence, probabilities (fixed_size_list<float32>[K]), additivity_error (the largest
  |sum of SHAP values - (output - expected output)| over classes).
- ``predictions.parquet``: every validation row's source_id, label, predicted and confidence
  (what a later run's comparison matches on).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from tasks.deepshap.agnostic import kernel_engine
from tasks.deepshap.engine import UnsupportedModelError, model_engine
from tasks.model.run_model import RunModel, load_run_model
from tasks.run import layout
from tasks.run.artifacts import atomic_path, write_parquet_atomic
from tasks.run.checks import SECTION_QUALITY, Check
from tasks.data.dataset import require_rows
from tasks.run.errors import InputError
from tasks.run.formats import (META_DEVICE, META_ENGINE, META_EXPECTED, META_SEED, META_SHAPE, META_WORKER,
                               background_images, file_ref, float32_column, float32_rows, metadata, read_split)

# Rows per shard, the unit of work a worker takes, when the run does not say: on a CPU small (shards run side
# by side, one per core); on a GPU large, so a shard's fixed cost (weights, background pass) stays a small share.
SHARD_ROWS, GPU_SHARD_ROWS = 8, 512
ADDITIVITY_THRESHOLD = 1e-4  # on probabilities; larger residuals are flagged in the report


def choose_device() -> torch.device:
    """CUDA when present (a GPU-tagged worker), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def select_background(n_train: int, size: int, seed: int) -> np.ndarray:
    """`size` distinct training indices, drawn with `seed`."""
    require_rows("background", size, "training", n_train)
    return np.sort(np.random.default_rng(seed).choice(n_train, size=size, replace=False))


def select_images(labels: np.ndarray, predicted: np.ndarray, size: int, seed: int) -> np.ndarray:
    """`size` validation indices covering every class and including misclassified images.

    Half the budget (at most) goes to misclassified images, taken round-robin over true
    classes; the rest to correctly classified ones, round-robin over classes, then anything.
    """
    n = len(labels)
    require_rows("explain", size, "validation", n)
    rng = np.random.default_rng(seed + 1)
    order = rng.permutation(n)
    wrong = [i for i in order if labels[i] != predicted[i]]
    right = [i for i in order if labels[i] == predicted[i]]
    chosen = _round_robin(wrong, labels, min(len(wrong), size // 2 if size > 1 else 0))
    chosen += _round_robin(right, labels, size - len(chosen), exclude=set(chosen))
    chosen += [i for i in order if i not in set(chosen)][: size - len(chosen)]
    return np.array(chosen[:size], dtype=np.int64)


def additivity_errors(values: np.ndarray, probabilities: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Per image, the largest |sum of SHAP values - (output - expected output)| over classes.

    values: (n, K, *input); probabilities: (n, K); expected: (K,).
    """
    sums = values.reshape(*values.shape[:2], -1).sum(-1, dtype=np.float64)
    return np.abs(sums - (probabilities - expected)).max(1)


def stage_outputs(run_dir: Path | str) -> dict:
    """The SHAP stage's result, read from the files it wrote: what the merge returns, and what the main flow
    reads back when the stage ran in another process (a GPU worker, through the `deepshap` deployment)."""
    keys = ("shap_values", "explained", "background", "predictions")
    missing = [str(layout.path(run_dir, k)) for k in keys if not layout.path(run_dir, k).is_file()]
    if missing:
        raise InputError(f"the SHAP stage did not write {', '.join(missing)}")
    meta = metadata(layout.path(run_dir, "shap_values"))
    errors = pq.read_table(layout.path(run_dir, "explained"), columns=["additivity_error"]).column(0).to_numpy()
    over = int((errors > ADDITIVITY_THRESHOLD).sum())
    method = "Kernel SHAP (SHAP stage)" if meta[META_ENGINE.decode()] == "kernel" else "DeepSHAP"
    check = Check("deepshap.additivity", method, "additivity (largest error)", float(errors.max()),
                  ADDITIVITY_THRESHOLD, "at most", SECTION_QUALITY,
                  f"{over} explanations exceed the {method} additivity threshold {ADDITIVITY_THRESHOLD:g}.")
    return {"files": {k: file_ref(layout.path(run_dir, k)) for k in keys}, "checks": [check.to_json()],
            "engine": meta[META_ENGINE.decode()], "device": meta[META_DEVICE.decode()],
            "max_additivity_error": float(errors.max()), "mean_additivity_error": float(errors.mean()),
            "over_threshold": over, "expected_values": json.loads(meta[META_EXPECTED.decode()])}


def _round_robin(candidates: list[int], labels: np.ndarray, size: int, exclude: set | None = None) -> list[int]:
    by_class: dict[int, list[int]] = {}
    for i in candidates:
        if not exclude or i not in exclude:
            by_class.setdefault(int(labels[i]), []).append(i)
    picked: list[int] = []
    while len(picked) < size and any(by_class.values()):
        for k in sorted(by_class):
            if by_class[k] and len(picked) < size:
                picked.append(by_class[k].pop(0))
    return picked


def shap_deep_explainer(model: RunModel | torch.nn.Module, background: torch.Tensor, seed: int = 0):
    """shap's own DeepExplainer of a run's model's probabilities (or of a module's outputs), as a function of a
    batch: returns (n, K, C, H, W) values."""
    import shap

    module = model.probability_module() if isinstance(model, RunModel) else model
    explainer = shap.DeepExplainer(module.to(background.device).eval(), background)

    def explain(images: torch.Tensor) -> np.ndarray:
        values = explainer.shap_values(images, check_additivity=False)  # (n, C, H, W, K)
        return np.moveaxis(np.asarray(values), -1, 1)

    return explain


def deep_shap_engine(model: RunModel, background: torch.Tensor, seed: int = 0):
    """The fast exact engine (tasks/deepshap/engine.py), as a function of a batch: (n, K, C, H, W) values."""
    try:
        engine = model_engine(model, background)
    except UnsupportedModelError as exc:
        raise InputError(str(exc)) from None
    return engine.shap_values


def kernel_shap_engine(model: RunModel, background: torch.Tensor, seed: int = 0):
    """Model-agnostic Kernel SHAP (tasks/deepshap/agnostic.py), for models without a DeepSHAP graph."""
    return kernel_engine(model.predict_proba, background, seed)


ENGINES = {"fast": deep_shap_engine, "shap": shap_deep_explainer, "kernel": kernel_shap_engine}


def stage_engine(model: RunModel, requested: str) -> str:
    """The engine the stage uses: the one asked for, or Kernel SHAP where the model has no DeepSHAP graph."""
    return "kernel" if model.record["capabilities"].get("deepshap") else requested


@contextlib.contextmanager
def restoring_torch_threads():
    """Give this process back its torch thread count after shards ran in it (each pins it to one); yields
    the count it had, which is how many shards can run side by side here."""
    threads = torch.get_num_threads()
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)


def plan_explanation(model_path: Path, train_path: Path, validation_path: Path, run_dir: Path, background: int,
                     rows: int, seed: int, engine: str = "fast", shard_size: int | None = None) -> dict:
    """Choose the background and the rows to explain, predict every validation row, and cut the rows into shards.

    Writes ``plan.parquet``, ``background.parquet`` and ``predictions.parquet``: all a shard needs besides the
    weights, so a shard reads a few rows, never a whole split. Returns the plan's file and the shards'
    [start, stop) positions.
    """
    if engine not in ENGINES:
        raise InputError(f"unknown SHAP engine {engine!r}: use one of {', '.join(ENGINES)}")
    if shard_size is not None and shard_size < 1:
        raise InputError(f"--shard-size must be a positive integer, got {shard_size!r}")
    model = load_run_model(model_path)
    engine = stage_engine(model, engine)
    train, val = read_split(Path(train_path)), read_split(Path(validation_path))
    device = choose_device()
    shard_size = shard_size or (GPU_SHARD_ROWS if device.type == "cuda" else SHARD_ROWS)
    val_probs = model.predict_proba(val.inputs)
    predicted = val_probs.argmax(1)
    background_idx = select_background(len(train.inputs), background, seed)
    image_idx = select_images(val.labels, predicted, rows, seed)
    expected = model.predict_proba(train.inputs[background_idx]).mean(0)
    shape = list(val.inputs.shape[1:])  # [C, H, W] or [n_features]
    meta = {META_EXPECTED: json.dumps(expected.tolist()).encode(), META_SHAPE: json.dumps(shape).encode(),
            META_ENGINE: engine.encode(), META_SEED: str(seed).encode()}
    plan = pa.table({
        "position": pa.array(np.arange(len(image_idx)), type=pa.int32()),
        "source_id": [val.source_ids[i] for i in image_idx],
        "label": pa.array(val.labels[image_idx], type=pa.int64()),
        "predicted": pa.array(predicted[image_idx], type=pa.int64()),
        "confidence": pa.array(val_probs[image_idx, predicted[image_idx]], type=pa.float32()),
        "probabilities": float32_column(val_probs[image_idx]),
        "inputs": float32_column(val.inputs[image_idx]),
    }).replace_schema_metadata(meta)
    path = write_parquet_atomic(layout.path(run_dir, "plan"), plan)
    write_parquet_atomic(layout.path(run_dir, "background"), pa.table({
        "source_id": [train.source_ids[i] for i in background_idx],
        "inputs": float32_column(train.inputs[background_idx])}).replace_schema_metadata(meta))
    write_parquet_atomic(layout.path(run_dir, "predictions"), pa.table({
        "source_id": val.source_ids, "label": pa.array(val.labels, type=pa.int64()),
        "predicted": pa.array(predicted, type=pa.int64()),
        "confidence": pa.array(val_probs.max(1), type=pa.float32())}))
    return {"plan": file_ref(path),
            "shards": [[start, min(start + shard_size, len(image_idx))]
                       for start in range(0, len(image_idx), shard_size)]}


def explain_shard(model_path: Path, plan_path: Path, run_dir: Path, start: int, stop: int) -> dict:
    """DeepSHAP values of the plan's rows [start, stop), written to ``deepshap/shards/``; any worker can run it.

    Shards are independent of each other and of where they run: the values of a row depend only on the
    weights, the background and the row. A shard computes with one torch thread: with more, float32 sums
    are split by thread count and the values change in their last bits. So on workers of one kind (CPU
    or GPU model), the merged file is the same bits however the shards were spread (tests/test_dask.py);
    parallelism comes from running shards side by side. This pins the process's torch threads to one:
    callers that go on computing wrap shards in `restoring_torch_threads()`.
    """
    torch.set_num_threads(1)
    plan_path = Path(plan_path)
    model = load_run_model(model_path)
    rows = pq.read_table(plan_path, columns=["position", "source_id", "inputs"]).slice(start, stop - start)
    meta = metadata(plan_path)
    shape, engine = json.loads(meta[META_SHAPE.decode()]), meta[META_ENGINE.decode()]
    if rows.num_rows != stop - start or rows.num_rows == 0:
        raise InputError(f"shard [{start}, {stop}) is outside the plan's {pq.read_metadata(plan_path).num_rows} rows")
    device = choose_device() if engine != "kernel" else torch.device("cpu")
    if model.file.module is not None and engine != "kernel":
        model.file.module.to(device)
    background_x = torch.from_numpy(background_images(layout.path(run_dir, "background"))).to(device)
    explain = ENGINES[engine](model, background_x, int(meta.get(META_SEED.decode(), 0)))
    phi = explain(torch.from_numpy(float32_rows(rows.column("inputs"), shape)))
    n, n_classes = phi.shape[:2]
    table = pa.table({
        "position": pa.array(np.repeat(rows.column("position").to_numpy(), n_classes), type=pa.int32()),
        "source_id": [sid for sid in rows.column("source_id").to_pylist() for _ in range(n_classes)],
        "class_index": pa.array(np.tile(np.arange(n_classes), n), type=pa.int32()),
        "values": float32_column(phi.reshape(n * n_classes, -1)),
    }).replace_schema_metadata({META_DEVICE: device.type.encode(),  # where it ran: the audit trail
                                META_WORKER: f"{socket.gethostname()}:{os.getpid()}".encode()})
    return file_ref(write_parquet_atomic(layout.shard_file(run_dir, start, stop), table))


def merge_shards(plan_path: Path, shard_paths: list[str], run_dir: Path) -> dict:
    """Join the shards, in order, into ``shap_values.parquet``; check they cover the plan once; measure
    additivity on every row; write ``explained.parquet``. Returns `stage_outputs`."""
    plan = pq.read_table(Path(plan_path), columns=["position", "source_id", "label", "predicted", "confidence",
                                                   "probabilities"])
    meta = plan.schema.metadata
    expected = np.array(json.loads(meta[META_EXPECTED]))
    probs = float32_rows(plan.column("probabilities"), [len(expected)])
    shape = json.loads(meta[META_SHAPE])
    devices = sorted({pq.read_schema(p).metadata[META_DEVICE].decode() for p in shard_paths})
    values_meta = {**meta, META_DEVICE: ",".join(devices).encode()}
    values_schema = pa.schema([("position", pa.int32()), ("source_id", pa.string()), ("class_index", pa.int32()),
                               ("values", pa.list_(pa.float32(), int(np.prod(shape))))], metadata=values_meta)
    additivity = np.full(plan.num_rows, np.nan)
    next_position = 0
    values_path = layout.path(run_dir, "shap_values")
    with atomic_path(values_path) as tmp, pq.ParquetWriter(tmp, values_schema, compression="zstd") as writer:
        for path in shard_paths:  # one at a time: memory stays at one shard's values
            shard = pq.read_table(path)
            positions = np.unique(shard.column("position").to_numpy())
            if positions[0] != next_position or len(positions) != positions[-1] - positions[0] + 1:
                raise InputError(f"shard {path} holds rows {positions[0]}..{positions[-1]}; "
                                 f"row {next_position} was next")
            phi = float32_rows(shard.column("values"), [len(expected), *shape])
            additivity[positions] = additivity_errors(phi, probs[positions], expected)
            writer.write_table(shard.cast(values_schema))
            next_position = positions[-1] + 1
        if next_position != plan.num_rows:  # inside the block: the incomplete file is never renamed into place
            raise InputError(f"the shards cover rows 0..{next_position - 1} of the plan's {plan.num_rows}")
    explained = plan.append_column("additivity_error", pa.array(additivity, type=pa.float64()))
    write_parquet_atomic(layout.path(run_dir, "explained"), explained.replace_schema_metadata(None))
    return stage_outputs(run_dir)


def shard_workers(run_dir: Path) -> list[dict]:
    """Where the SHAP shards of a run were computed, per worker: host:pid, device, shards and rows."""
    workers: dict[tuple[str, str], dict] = {}
    for path in sorted(layout.folder(run_dir, "shards").glob("shard-*.parquet")):
        meta = pq.read_schema(path).metadata
        key = (meta[META_WORKER].decode(), meta[META_DEVICE].decode())
        entry = workers.setdefault(key, {"worker": key[0], "device": key[1], "shards": 0, "rows": 0})
        entry["shards"] += 1
        start, stop = layout.shard_rows(path)
        entry["rows"] += stop - start
    return list(workers.values())
