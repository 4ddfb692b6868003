"""Open a model file of any accepted format (tasks/model/formats.py) as one `ModelFile`: how to run it,
what it says about itself, and the torch graph the gradient methods and DeepSHAP use where one exists.

Nothing is unpickled: torch.export archives (JSON graph, raw weights; every record torch might unpickle is
checked with its weights_only loader first, tasks/model/safe_archive.py), TorchScript (TorchScript's own
restricted reader, its pickles checked first), ONNX (protobuf, run by onnxruntime) and safetensors hold no
Python objects. Each file is read once: the bytes checked are the bytes loaded.

An ONNX file runs on onnxruntime (the model as deployed). Its torch graph, for gradients and
DeepSHAP, is onnx2torch's conversion, and only where the converted graph gives onnxruntime's outputs
on the evaluation data within CONVERSION_TOLERANCE (`check_conversion`).
"""

from __future__ import annotations

import collections
import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tasks.model.formats import detect_format
from tasks.model.safe_archive import load_export, load_torchscript
from tasks.run.errors import InputError, first_line

CONVERSION_TOLERANCE = 1e-5  # largest |onnx2torch - onnxruntime| output difference accepted
BATCH = 256


@dataclass
class ModelFile:
    """A loaded model file. `run(inputs)` gives its raw outputs (n, K) float64, whatever runs it."""

    path: Path
    format: str  # one of tasks.model.formats.FORMATS
    producer: dict  # what the file says about who wrote it (framework, versions, opset)
    input_shape: list  # per-sample input shape; None where the file leaves a dimension free
    input_name: str | None
    parameters: dict[str, np.ndarray]  # every weight tensor, by name (ONNX: the initializers)
    operations: list[tuple[str, int]]  # operation type -> count, most frequent first
    module: nn.Module | None = None  # a torch module computing the outputs (differentiable), if any
    program: torch.export.ExportedProgram | None = None  # the graph DeepSHAP reads, if not `module`'s own trace
    graph_note: str = ""  # where the torch graph comes from, or why there is none
    session: object = None  # onnxruntime.InferenceSession for ONNX files
    output_name: str | None = None  # the ONNX output holding the class scores
    column_inputs: list[str] | None = None  # an ONNX table model with one (n, 1) input per column, by name
    channels_last: bool = False  # ONNX images taken as (n, H, W, C)
    static_batch: int | None = None  # a graph that only runs on batches of exactly this size
    meta: dict = field(default_factory=dict)  # format-specific facts (e.g. the reference model's config)

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """Raw outputs (n, K), float64, for inputs (n, *input_shape) in the pipeline's layout (channels first)."""
        inputs = np.ascontiguousarray(inputs, dtype=np.float32)
        chunks = [self._run_batch(inputs[i : i + BATCH]) for i in range(0, len(inputs), BATCH)]
        return np.concatenate(chunks).astype(np.float64) if chunks else np.empty((0, 0))

    def _run_batch(self, x: np.ndarray) -> np.ndarray:
        if self.session is not None:
            if self.channels_last:
                x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
            return onnx_outputs(self.session, self.output_name, x, self.column_inputs)
        with torch.no_grad():
            return _run_padded(self.module, torch.from_numpy(x), self.static_batch).numpy()


def _run_padded(module, x: torch.Tensor, static_batch: int | None) -> torch.Tensor:
    """`module(x)`; a graph fixed to one batch size gets batches of that size (the last one padded)."""
    if static_batch is None or len(x) == static_batch:
        return module(x)
    out = []
    for start in range(0, len(x), static_batch):
        chunk = x[start : start + static_batch]
        padded = torch.cat([chunk, chunk[-1:].expand(static_batch - len(chunk), *chunk.shape[1:])])
        out.append(module(padded)[: len(chunk)])
    return torch.cat(out)


class StaticBatch(nn.Module):
    """A module fixed to one batch size made to take any (the gradient methods' batches)."""

    def __init__(self, module, batch: int):
        super().__init__()
        self.inner, self.batch = module, batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _run_padded(self.inner, x, self.batch)


def open_model(path: Path, fmt: str | None = None) -> ModelFile:
    """The model file at `path`; InputError (one line naming the file) for anything that cannot be opened."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    try:
        return OPENERS[fmt](path)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of a loader means the file cannot be used
        raise InputError(f"--model {path}: cannot load this {fmt} file: {first_line(exc)}") from None


def _open_export(path: Path) -> ModelFile:
    data = path.read_bytes()
    program = load_export(data, path)
    signature = program.graph_signature
    users = [spec for spec in signature.input_specs if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT]
    if len(users) != 1 or len(signature.user_outputs) != 1:
        raise InputError(f"--model {path}: the exported program takes {len(users)} inputs and returns "
                         f"{len(signature.user_outputs)} outputs; the pipeline needs one input tensor and one output")
    value = next(n for n in program.graph.nodes if n.name == users[0].arg.name).meta.get("val")
    shape = [int(d) if isinstance(d, int) else None for d in value.shape] if value is not None else [None]
    state = {**program.state_dict, **{k: v for k, v in program.constants.items() if isinstance(v, torch.Tensor)}}
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        versions = {name.split("/", 1)[1]: archive.read(name).decode(errors="replace").strip()
                    for name in archive.namelist() if name.endswith(("archive_format", "archive_version"))}
    operations = collections.Counter(str(n.target).removesuffix(".default")
                                     for n in program.graph.nodes if n.op == "call_function")
    module = program.module()
    static = shape[0] if shape and shape[0] is not None else None
    return ModelFile(path, "torch.export", {"framework": "PyTorch (torch.export)", **versions},
                     shape[1:], users[0].arg.name, _numpy(state), operations.most_common(), module=module,
                     program=program, graph_note="the exported program's own graph", static_batch=static)


def _open_torchscript(path: Path) -> ModelFile:
    data = path.read_bytes()
    module = load_torchscript(data, path)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        version = next((archive.read(n).decode().strip() for n in archive.namelist() if n.endswith("/version")), "?")
    operations = collections.Counter(node.kind() for node in module.inlined_graph.nodes()
                                     if node.kind().startswith("aten::"))
    state = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    return ModelFile(path, "torchscript", {"framework": "PyTorch (TorchScript)", "file format version": version},
                     [None], None, _numpy(state), operations.most_common(), module=module,
                     graph_note="TorchScript, converted for DeepSHAP with torch.export's TorchScript converter")


def _open_onnx(path: Path) -> ModelFile:
    import onnx
    import onnxruntime

    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    try:
        proto = onnx.load(str(path), load_external_data=False)
        # The files beside the model that hold its weights ("external data"), each once: read before loading
        # them, which refuses any outside the model's folder and clears their locations.
        external = list(dict.fromkeys(ExternalDataInfo(t).location for t in _get_all_tensors(proto)
                                      if uses_external_data(t)))
        onnx.load_external_data_for_model(proto, str(path.parent))
        onnx.checker.check_model(proto)
    except Exception as exc:  # noqa: BLE001 - protobuf and checker errors have many types
        raise InputError(f"--model {path}: not a valid ONNX model ({first_line(exc)})") from None
    initializers = {init.name for init in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    shapes = [[d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim]
              for i in inputs]
    columns = len(inputs) > 1 and all(len(shape) == 2 and shape[1] == 1 for shape in shapes)
    if len(inputs) != 1 and not columns:
        raise InputError(f"--model {path}: the ONNX graph has {len(inputs)} inputs "
                         f"({', '.join(i.name for i in inputs)}); the pipeline maps one input tensor, or one "
                         "(batch, 1) input per table column")
    dims = [shapes[0][0], len(inputs)] if columns else shapes[0]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    output_name = output_of(session, path)  # refuses outputs it cannot map
    from onnx import numpy_helper

    parameters = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    operations = collections.Counter(f"{n.domain}.{n.op_type}" if n.domain else n.op_type for n in proto.graph.node)
    producer = {"framework": "ONNX", "producer": f"{proto.producer_name} {proto.producer_version}".strip() or "not "
                "stated", "opsets": ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in proto.opset_import),
                "IR version": str(proto.ir_version)}
    channels_last = len(dims) == 4 and dims[3] in (1, 3) and dims[1] not in (1, 3)
    shape = [dims[3], dims[1], dims[2]] if channels_last else dims[1:]
    model = ModelFile(path, "onnx", producer, shape, inputs[0].name, _numpy(parameters), operations.most_common(),
                      session=session, output_name=output_name, channels_last=channels_last,
                      column_inputs=[i.name for i in inputs] if columns else None,
                      static_batch=dims[0] if dims else None)
    model.meta.update(proto=proto, external_data=[path.parent / location for location in external])
    return model


def _open_safetensors(path: Path) -> ModelFile:
    from tasks.model.reference import architecture, load_weights

    module, config, training = load_weights(path)
    operations = collections.Counter(type(m).__name__ for m in module.modules() if not list(m.children()))
    shape = [config.in_channels, None, None] if architecture(config) == "cnn" else [config.in_features]
    model = ModelFile(path, "safetensors", {"framework": "accountability reference " + architecture(config)},
                      shape, None, _numpy(module.state_dict()), operations.most_common(), module=module,
                      graph_note="the reference model rebuilt from its weights")
    model.meta.update(config=config, training=training)
    return model


OPENERS = {"torch.export": _open_export, "torchscript": _open_torchscript, "onnx": _open_onnx,
           "safetensors": _open_safetensors}


def _numpy(state: dict) -> dict[str, np.ndarray]:
    return {name: value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            for name, value in state.items()}


# -- ONNX outputs ----------------------------------------------------------------------------------

def output_of(session, path: Path) -> str:
    """The name of the one ONNX output holding per-class scores: a float (n, K) tensor, or scikit-learn's
    ZipMap (a list of {class: probability}); a label output beside it is ignored."""
    scores = [o for o in session.get_outputs()
              if (o.type.startswith("tensor(float") or o.type.startswith("tensor(double")) and len(o.shape) == 2]
    maps = [o for o in session.get_outputs() if o.type.startswith("seq(map")]
    candidates = scores or maps
    if len(candidates) != 1:
        described = ", ".join(f"{o.name} {o.type} {o.shape}" for o in session.get_outputs())
        raise InputError(f"--model {path}: cannot tell which ONNX output holds the class scores ({described}); "
                         "export one float output of shape (batch, classes)")
    return candidates[0].name


def onnx_outputs(session, name: str, x: np.ndarray, columns: list[str] | None = None) -> np.ndarray:
    """The class scores (n, K) of an ONNX session for a batch `x`; with `columns`, column j feeds the input
    named columns[j]."""
    feeds = {i.name: i for i in session.get_inputs()}
    parts = ({column: x[:, [j]] for j, column in enumerate(columns)} if columns
             else {next(iter(feeds)): x})
    types = {"tensor(double)": np.float64, "tensor(int64)": np.int64, "tensor(int32)": np.int32}
    (out,) = session.run([name], {key: value.astype(types.get(feeds[key].type, np.float32))
                                  for key, value in parts.items()})
    if isinstance(out, list):  # ZipMap: one {class: probability} per row
        keys = sorted(out[0]) if out else []
        out = np.array([[row[k] for k in keys] for row in out])
    return np.asarray(out)


# -- the torch graph of an ONNX file ---------------------------------------------------------------

def convert_onnx(model: ModelFile) -> str | None:
    """Give an ONNX model its torch graph (onnx2torch's conversion); the reason when there is none."""
    try:
        from onnx2torch import convert

        module = convert(model.meta["proto"]).eval()
    except Exception as exc:  # noqa: BLE001 - onnx2torch raises NotImplementedError and others per operation
        return f"onnx2torch cannot convert the graph: {first_line(exc)}"
    model.module = ChannelsLast(module) if model.channels_last else module
    model.graph_note = "onnx2torch's conversion of the ONNX graph"
    return None


def check_conversion(model: ModelFile, inputs: np.ndarray, reference: np.ndarray | None = None) -> dict:
    """Convert an ONNX model; keep the torch graph only where its outputs equal onnxruntime's on `inputs`
    (`reference`, when the caller has them) within CONVERSION_TOLERANCE. Returns what happened, for the
    model record."""
    reason = convert_onnx(model)
    if reason:
        model.graph_note = reason
        return {"converted": False, "reason": reason}
    try:
        with torch.no_grad():
            converted = np.concatenate([_run_padded(model.module, torch.from_numpy(inputs[i : i + BATCH]),
                                                    model.static_batch).double().numpy()
                                        for i in range(0, len(inputs), BATCH)])
        reference = model.run(inputs) if reference is None else reference
        difference = (float(np.abs(converted - reference).max()) if converted.shape == reference.shape
                      else float("inf"))
    except Exception as exc:  # noqa: BLE001
        difference, failure = float("inf"), f"onnx2torch's graph fails on the data: {first_line(exc)}"
    else:
        failure = (f"onnx2torch's graph differs from onnxruntime by {difference:.2e} on the data (more than "
                   f"{CONVERSION_TOLERANCE:g}); the conversion is not used")
    if not difference <= CONVERSION_TOLERANCE:
        model.module, model.graph_note = None, failure
        return {"converted": False, "reason": failure}
    model.graph_note = f"onnx2torch's conversion, equal to onnxruntime within {difference:.1e} on the data"
    return {"converted": True, "max_difference": difference}


class ChannelsLast(nn.Module):
    """Takes the pipeline's (n, C, H, W) images and hands a channels-last graph (n, H, W, C)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.permute(0, 2, 3, 1))
