"""Step 3, explain: DeepSHAP values of the model's class probabilities for chosen validation images.

Files (in ``explain/``):
- ``shap_values.parquet``: one row per (explained image, class): position, source_id,
  class_index, values (fixed_size_list<float32>[C*H*W], same layout as the image).
  Metadata: ``accountability.expected_values`` (JSON, per class), ``accountability.input_shape``.
- ``explained.parquet``: one row per explained image: position, source_id, label, predicted,
  confidence, probabilities (fixed_size_list<float32>[K]), additivity_error (the largest
  |sum of SHAP values - (output - expected output)| over classes).
- ``background.parquet``: source_id of each background image.
- ``predictions.parquet``: every validation row's source_id, label, predicted and confidence
  (what a later run's comparison matches on).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from tasks.artifacts import atomic_path, sha256_file, write_parquet_atomic
from tasks.deep_shap import DeepShapEngine, UnsupportedModelError
from tasks.errors import InputError
from tasks.load import Split, read_split, require_rows
from tasks.model import load_weights, probabilities
from tasks.progress import progress_bar

CHUNK_IMAGES = 8  # images explained (and written) per chunk: bounds memory for large runs


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


def background_images(train: Split, background_path: Path) -> np.ndarray:
    """The training images a run used as its SHAP background, from ``explain/background.parquet``."""
    wanted = set(pq.read_table(background_path).column("source_id").to_pylist())
    return train.inputs[[i for i, sid in enumerate(train.source_ids) if sid in wanted]]


def read_shap_values(path: Path) -> tuple[np.ndarray, dict]:
    """SHAP values as (n_rows, K, *input_shape) and the file's metadata (decoded)."""
    table = pq.read_table(path)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    shape = json.loads(meta["accountability.input_shape"])
    n_classes = len(json.loads(meta["accountability.expected_values"]))
    values = table.column("values").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return values.reshape(-1, n_classes, *shape), meta


def explain_outputs(run_dir: Path) -> dict:
    """The explain step's result, read from the files it wrote: what `explain_model` returns, and what the
    main flow reads back when the step ran in another process (a GPU worker, through the `explain` deployment)."""
    out_dir = Path(run_dir) / "explain"
    files = {name: out_dir / f"{name}.parquet" for name in ("shap_values", "explained", "background", "predictions")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise InputError(f"the explain stage did not write {', '.join(missing)}")
    meta = pq.read_schema(files["shap_values"]).metadata
    errors = pq.read_table(files["explained"], columns=["additivity_error"]).column(0).to_numpy()
    return {**{name: {"path": str(p), "sha256": sha256_file(p)} for name, p in files.items()},
            "engine": meta[b"accountability.engine"].decode(), "device": meta[b"accountability.device"].decode(),
            "max_additivity_error": float(errors.max()),
            "expected_values": json.loads(meta[b"accountability.expected_values"])}


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


def shap_deep_explainer(model: torch.nn.Module, background: torch.Tensor):
    """shap's own DeepExplainer, as a function of a batch: returns (n, K, C, H, W) values."""
    import shap

    explainer = shap.DeepExplainer(model, background)

    def explain(images: torch.Tensor) -> np.ndarray:
        values = explainer.shap_values(images, check_additivity=False)  # (n, C, H, W, K)
        return np.moveaxis(np.asarray(values), -1, 1)

    return explain


def deep_shap_engine(model: torch.nn.Module, background: torch.Tensor):
    """The fast exact engine (tasks/deep_shap.py), as a function of a batch: (n, K, C, H, W) values."""
    try:
        engine = DeepShapEngine(model, background)
    except UnsupportedModelError as exc:
        raise InputError(str(exc)) from None
    return engine.shap_values


ENGINES = {"fast": deep_shap_engine, "shap": shap_deep_explainer}


def explain_model(weights_path: Path, train_path: Path, validation_path: Path, run_dir: Path,
                  background: int, explain: int, seed: int, engine: str = "fast") -> dict:
    """Explain `explain` validation images against `background` training images; write the Parquet files."""
    run_dir = Path(run_dir)
    model, _, _ = load_weights(Path(weights_path))
    train, val = read_split(Path(train_path)), read_split(Path(validation_path))
    device = choose_device()
    prob_model = probabilities(model).to(device).eval()

    with torch.no_grad():
        val_probs = torch.cat([prob_model(torch.from_numpy(val.inputs[i : i + 256]).to(device)).cpu()
                               for i in range(0, len(val.inputs), 256)]).numpy()
    predicted = val_probs.argmax(1)
    background_idx = select_background(len(train.inputs), background, seed)
    image_idx = select_images(val.labels, predicted, explain, seed)
    background_x = torch.from_numpy(train.inputs[background_idx]).to(device)
    with torch.no_grad():
        expected = prob_model(background_x).mean(0).cpu().numpy().astype(np.float64)  # (K,)

    explain_fn = ENGINES[engine](prob_model, background_x)
    n_classes = len(val.class_names)
    shape = list(val.inputs.shape[1:])  # [C, H, W] or [n_features]
    size = int(np.prod(shape))
    out_dir = run_dir / "explain"
    values_path = out_dir / "shap_values.parquet"
    values_meta = {b"accountability.expected_values": json.dumps(expected.tolist()).encode(),
                   b"accountability.input_shape": json.dumps(shape).encode(),
                   b"accountability.engine": engine.encode(), b"accountability.device": device.type.encode()}
    values_schema = pa.schema([("position", pa.int32()), ("source_id", pa.string()), ("class_index", pa.int32()),
                               ("values", pa.list_(pa.float32(), size))], metadata=values_meta)
    additivity = np.zeros(len(image_idx))
    with atomic_path(values_path) as tmp, pq.ParquetWriter(tmp, values_schema, compression="zstd") as writer:
        with progress_bar(f"SHAP ({engine}, {device.type})", total=len(image_idx)) as advance:
            for start in range(0, len(image_idx), CHUNK_IMAGES):
                chunk = image_idx[start : start + CHUNK_IMAGES]
                phi = explain_fn(torch.from_numpy(val.inputs[chunk]).to(device))  # (n, K, *shape)
                additivity[start : start + len(chunk)] = additivity_errors(phi, val_probs[chunk], expected)
                positions = np.repeat(np.arange(start, start + len(chunk)), n_classes)
                flat = pa.array(phi.astype(np.float32).reshape(-1), type=pa.float32())
                writer.write_table(pa.table({
                    "position": pa.array(positions, type=pa.int32()),
                    "source_id": [val.source_ids[i] for i in chunk for _ in range(n_classes)],
                    "class_index": pa.array(np.tile(np.arange(n_classes), len(chunk)), type=pa.int32()),
                    "values": pa.FixedSizeListArray.from_arrays(flat, size),
                }, schema=values_schema))
                advance(len(chunk), status=f"max additivity error {additivity[: start + len(chunk)].max():.1e}")

    explained = pa.table({
        "position": pa.array(np.arange(len(image_idx)), type=pa.int32()),
        "source_id": [val.source_ids[i] for i in image_idx],
        "label": pa.array(val.labels[image_idx], type=pa.int64()),
        "predicted": pa.array(predicted[image_idx], type=pa.int64()),
        "confidence": pa.array(val_probs[image_idx, predicted[image_idx]], type=pa.float32()),
        "probabilities": pa.FixedSizeListArray.from_arrays(
            pa.array(val_probs[image_idx].astype(np.float32).reshape(-1), type=pa.float32()), n_classes),
        "additivity_error": pa.array(additivity, type=pa.float64()),
    })
    write_parquet_atomic(out_dir / "explained.parquet", explained)
    write_parquet_atomic(
        out_dir / "background.parquet", pa.table({"source_id": [train.source_ids[i] for i in background_idx]}))
    write_parquet_atomic(out_dir / "predictions.parquet", pa.table({
        "source_id": val.source_ids, "label": pa.array(val.labels, type=pa.int64()),
        "predicted": pa.array(predicted, type=pa.int64()),
        "confidence": pa.array(val_probs.max(1), type=pa.float32())}))
    return explain_outputs(run_dir)  # the same result whether this ran here or on another worker
