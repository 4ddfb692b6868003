"""The model step for a model the user supplied (``--model FILE``): nothing is trained.

Before the run directory exists (`fit_data_to_model`, called by the load step), the data is fitted
to the model's input signature and the model is run on all of it: a model that cannot take the data,
returns something other than (batch, classes) or returns NaN or infinity is refused in one line.

The step itself (`supplied_model`) copies the file into the run directory, writes the model record
(tasks/model/run_model.py) with what the model allows, and measures it on all the data: the
metrics files have one row per split (``train``: the rows the SHAP background and other
baselines come from, ``validation``: the rows explained, ``all``) at epoch 0, and
``model/evaluation.parquet`` holds every row's prediction (source_id, split, label, predicted).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tasks.data.dataset import Dataset
from tasks.data.images import MAX_SOURCE_PIXELS, resize_images
from tasks.deepshap.engine import model_engine
from tasks.deepshap.graph import UnsupportedModelError
from tasks.model.formats import detect_format
from tasks.model.run_model import RunModel, detect_outputs, write_record
from tasks.model.supplied import ModelFile, check_conversion, open_model
from tasks.run import layout
from tasks.run.artifacts import atomic_path, sha256_file
from tasks.run.errors import InputError, first_line
from tasks.run.formats import file_ref, read_split, write_frame
from tasks.steps.train import classification_metrics

MODEL_FILES = {"torch.export": "model_pt2", "torchscript": "model_torchscript", "onnx": "model_onnx",
               "safetensors": "weights"}  # format -> the layout key of its copy in the run directory
MAX_INPUT_VALUES = 3 * MAX_SOURCE_PIXELS  # per row: a model declaring more would need terabytes for a batch
LUMINANCE = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # RGB -> gray (ITU-R BT.601)


def fit_data_to_model(data: Dataset, path: Path, outputs: str | None) -> tuple[Dataset, dict]:
    """The dataset in the model's input shape, and facts about the model on it (its SHA-256 among them: the model
    step uses a copy with these very bytes); InputError for what cannot work."""
    checked = sha256_file(path)
    model = open_model(path)
    notes = []
    declared = [d for d in model.input_shape if d is not None]
    if declared and math.prod(declared) > MAX_INPUT_VALUES:
        raise InputError(f"--model {path} declares inputs of shape {_shape(model.input_shape)}: "
                         f"{math.prod(declared):,} values per row, over the {MAX_INPUT_VALUES:,} the pipeline takes")
    if data.modality == "table" and len(model.input_shape) > 1:
        raise InputError(f"--model {path} takes inputs of shape {_shape(model.input_shape)} (images: channels, "
                         f"height, width); dataset {data.name} is a table of {data.inputs.shape[1]} columns")
    if data.modality == "image":
        data.inputs, notes = _fit_images(data.inputs, model.input_shape, path)
    elif model.column_inputs:
        data, note = _columns_by_name(data, model.column_inputs, path)
        notes += [note] if note else []
    elif model.input_shape and model.input_shape[0] not in (None, data.inputs.shape[1]):
        raise InputError(f"--model {path} takes {model.input_shape[0]} features; dataset {data.name} has "
                         f"{data.inputs.shape[1]} ({', '.join(data.feature_names[:5])}"
                         f"{', ...' if data.inputs.shape[1] > 5 else ''})")
    try:
        raw = model.run(data.inputs)
    except Exception as exc:  # noqa: BLE001 - the model's own error says what it expected
        raise InputError(f"--model {path} cannot take inputs of shape {tuple(data.inputs.shape[1:])}: "
                         f"{first_line(exc)}") from None
    n_classes = len(data.class_names)
    if raw.ndim != 2 or len(raw) != len(data.inputs):
        raise InputError(f"--model {path} returns outputs of shape {tuple(raw.shape)}; the pipeline needs "
                         f"(batch, classes) = ({len(data.inputs)}, {n_classes})")
    if raw.shape[1] != n_classes:
        raise InputError(f"--model {path} has {raw.shape[1]} outputs; dataset {data.name} has {n_classes} classes "
                         f"({', '.join(data.class_names[:5])}{', ...' if n_classes > 5 else ''})")
    if not np.isfinite(raw).all():
        bad = int((~np.isfinite(raw)).any(1).sum())
        raise InputError(f"--model {path} returns NaN or infinite outputs on {bad} of {len(raw)} rows of "
                         f"dataset {data.name}")
    kind = detect_outputs(raw, outputs, path)
    if notes:
        data.provenance = {**data.provenance, "fitted to the model": "; ".join(notes)}
    if sha256_file(path) != checked:
        raise InputError(f"--model {path} changed while it was being checked: give a file nothing is writing")
    return data, {"format": model.format, "outputs": kind, "outputs_declared": outputs is not None,
                  "sha256": checked}


def _columns_by_name(data: Dataset, names: list[str], path: Path) -> tuple[Dataset, str]:
    """The table's columns in the order of the model's named inputs; columns the model does not take dropped."""
    missing = [name for name in names if name not in data.feature_names]
    if missing:
        raise InputError(f"--model {path} takes columns the dataset {data.name} does not have: "
                         f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}")
    unused = [name for name in data.feature_names if name not in names]
    data.inputs = np.ascontiguousarray(data.inputs[:, [data.feature_names.index(name) for name in names]])
    data.feature_names = list(names)
    return data, (f"columns matched to the model's inputs by name; not used by the model: {', '.join(unused)}"
                  if unused else "columns matched to the model's inputs by name")


def _fit_images(images: np.ndarray, shape: list, path: Path) -> tuple[np.ndarray, list[str]]:
    """Images converted to the model's channel count and resized to its height and width (where it fixes them)."""
    if len(shape) != 3:
        raise InputError(f"--model {path} takes inputs of shape {_shape(shape)}; the dataset holds images "
                         f"(channels, height, width)")
    notes = []
    channels, height, width = shape
    if channels not in (None, images.shape[1]):
        if channels == 3 and images.shape[1] == 1:
            images, note = np.repeat(images, 3, axis=1), "grayscale images repeated over 3 channels"
        elif channels == 1 and images.shape[1] == 3:
            images = np.tensordot(images, LUMINANCE, axes=([1], [0]))[:, None].astype(np.float32)
            note = "RGB images converted to grayscale (ITU-R BT.601 luminance)"
        else:
            raise InputError(f"--model {path} takes {channels}-channel images; the dataset's have {images.shape[1]}")
        notes.append(note)
    size = (height or images.shape[2], width or images.shape[3])
    if size != images.shape[2:]:
        images = resize_images(torch.from_numpy(np.ascontiguousarray(images)), size).clamp_(0, 1).numpy()
        notes.append(f"resized to {size[0]}x{size[1]} (bilinear, antialiased), the model's input size")
    return np.ascontiguousarray(images, dtype=np.float32), notes


def _shape(shape: list) -> str:
    return "(batch, " + ", ".join("?" if d is None else str(d) for d in shape) + ")"


ONNX_SINGLE_FILE_LIMIT = 2**31 - 2**20  # protobuf's 2 GB limit on one message, with room for the graph


def write_self_contained_onnx(model: ModelFile, path: Path) -> None:
    """The ONNX model (its weights already read from the external data files) as one file at `path`; the later
    steps open the run's copy alone, and verify hashes it."""
    proto = model.meta["proto"]
    if proto.ByteSize() > ONNX_SINGLE_FILE_LIMIT:
        raise InputError(f"--model {model.path}: its weights and graph come to {proto.ByteSize() / 2**30:.1f} GB, "
                         "over the 2 GB that one ONNX file can hold; a run copies the model into one file")
    path.write_bytes(proto.SerializeToString())


def supplied_model(model_path: str, train_path: str, validation_path: str, run_dir: str, outputs: str,
                   outputs_declared: bool = False, checked_sha256: str | None = None) -> dict:
    """Copy the model into the run, record what it allows, and measure it on all the data. The copy is what is used
    from here on, and it must hold the bytes the load step checked (`checked_sha256`): a file swapped in between
    is refused, not used unchecked."""
    run_dir, source = Path(run_dir), Path(model_path)
    fmt = detect_format(source)
    model = open_model(source, fmt) if fmt == "onnx" else None  # only ONNX may keep weights in files beside it
    external = model.meta.get("external_data", []) if model else []
    copy = layout.path(run_dir, MODEL_FILES[fmt])
    with atomic_path(copy) as tmp:
        if external:  # the run keeps the whole model in its one file: the weights are what the report describes
            write_self_contained_onnx(model, tmp)
        else:
            shutil.copyfile(source, tmp)
        used = sha256_file(tmp if not external else source)
        if checked_sha256 is not None and used != checked_sha256:
            raise InputError(f"--model {source} changed after it was checked (SHA-256 {checked_sha256[:12]}... "
                             f"then {used[:12]}...): the run does not use a model it has not checked")
    if not external:  # opened once, from the checked copy, not from the user's file
        model = open_model(copy, fmt)
    train, val = read_split(train_path), read_split(validation_path)
    record = {"source": "supplied", "format": model.format, "file": layout.FILES[MODEL_FILES[model.format]],
              "original_path": str(source), "sha256": sha256_file(copy), "size_bytes": copy.stat().st_size,
              "original_files": {path.name: sha256_file(path) for path in [source, *external]},
              "outputs": outputs, "outputs_declared": outputs_declared, "input_shape": list(train.inputs.shape[1:]),
              "n_outputs": len(train.class_names), "producer": model.producer, "input_name": model.input_name,
              "parameters": int(sum(v.size for v in model.parameters.values())), "operations": model.operations}
    every = np.concatenate([train.inputs, val.inputs])
    raw = model.run(every)  # once: the conversion check's reference and the metrics' predictions
    if not np.isfinite(raw).all():  # (the load step checked the same bytes; a model may still vary run to run)
        raise InputError(f"--model {source} returns NaN or infinite outputs on "
                         f"{int((~np.isfinite(raw)).any(1).sum())} of {len(raw)} rows")
    if model.format == "onnx":
        record["conversion"] = check_conversion(model, every, raw)
    record["capabilities"] = capabilities(model, train.inputs[:2], outputs)
    record["graph"] = model.graph_note
    write_record(layout.path(run_dir, "model"), record)

    probs = RunModel(model, record).probabilities(raw)
    labels = np.concatenate([train.labels, val.labels])
    everything = pd.DataFrame({"source_id": train.source_ids + val.source_ids,
                               "split": ["train"] * len(train.labels) + ["validation"] * len(val.labels),
                               "label": labels, "predicted": probs.argmax(1)})
    rows, class_rows = [], []
    for split in ("train", "validation", "all"):
        part = (everything["split"] == split).to_numpy() if split != "all" else np.ones(len(labels), dtype=bool)
        metrics = classification_metrics(labels[part], everything["predicted"].to_numpy()[part],
                                         len(train.class_names))
        per_class = metrics.pop("per_class")
        loss = float(-np.log(np.clip(probs[part][np.arange(part.sum()), labels[part]], 1e-12, None)).mean())
        rows.append({"epoch": 0, "split": split, "loss": loss, **metrics})
        for k, name in enumerate(train.class_names):
            class_rows.append({"epoch": 0, "split": split, "class_index": k, "class_name": name,
                               **{key: float(per_class[key][k]) for key in ("precision", "recall", "f1")},
                               "support": int(per_class["support"][k])})
    files = {"model": file_ref(layout.path(run_dir, "model")), "supplied_model": file_ref(copy),
             "metrics": write_frame(layout.path(run_dir, "metrics"), pd.DataFrame(rows)),
             "metrics_per_class": write_frame(layout.path(run_dir, "metrics_per_class"), pd.DataFrame(class_rows)),
             "evaluation": write_frame(layout.path(run_dir, "evaluation"), everything)}
    final = {k: v for k, v in rows[-1].items() if k not in ("epoch", "split")}
    return {"files": files, "supplied": True, "format": model.format, "final_validation": final,
            "n_rows": len(everything), "capabilities": record["capabilities"]}


def capabilities(model: ModelFile, example: np.ndarray, outputs: str) -> dict[str, str | None]:
    """Per capability of tasks/model/run_model.py: None where the model has it, else the reason why not."""
    if model.module is None:
        reason = f"no torch graph: {model.graph_note}" if model.graph_note else "no torch graph"
        return {"torch_graph": reason, "deepshap": reason}
    found: dict[str, str | None] = {"torch_graph": None}
    try:
        model_engine(RunModel(model, {"outputs": outputs}), torch.from_numpy(example))
        found["deepshap"] = None
    except UnsupportedModelError as exc:
        found["deepshap"] = f"the graph has an operation without an exact rule: {exc}"
    except Exception as exc:  # noqa: BLE001 - torch.export's converters fail in many ways
        found["deepshap"] = f"the graph cannot be read for DeepSHAP: {first_line(exc)}"
    return found

