"""The model a run validates, as every later step sees it: the run's model record (``model/model.json``)
and the file it names, trained here (safetensors) or supplied by the user (tasks/model/supplied.py).

The record says where the model file is, its SHA-256, whether its outputs are logits or
probabilities, and what it allows: `CAPABILITIES` maps each capability to None (available) or the
reason it is not. The technique registry declares what each technique requires of them.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tasks.model.supplied import ModelFile, StaticBatch, convert_onnx, open_model
from tasks.run import layout
from tasks.run.artifacts import sha256_file, write_json_atomic
from tasks.run.errors import InputError, NonFiniteOutputs

CAPABILITIES = {
    "torch_graph": "a differentiable torch graph (gradient methods)",
    "deepshap": "an exact DeepSHAP graph (the SHAP stage's engine and the faithfulness checks)",
}
PROBABILITY_TOLERANCE = 1e-4  # rows of probabilities sum to 1 within this


@dataclass
class RunModel:
    file: ModelFile
    record: dict
    replaced: dict[str, torch.Tensor] | None = None  # weights replaced in the DeepSHAP graph (`with_weights`)

    @property
    def logits(self) -> bool:
        return self.record["outputs"] == "logits"

    def predict_proba(self, inputs: np.ndarray) -> np.ndarray:
        """Class probabilities (n, K), float64: what every explanation explains. NonFiniteOutputs when any row's
        output is NaN or infinite: such a row cannot be scored (as class 0, say) without saying so."""
        outputs = self.file.run(inputs)
        bad = ~np.isfinite(outputs).all(axis=1) if outputs.ndim == 2 else ~np.isfinite(outputs)
        if bad.any():
            raise NonFiniteOutputs(int(bad.sum()), len(outputs))
        return self.probabilities(outputs)

    def probabilities(self, outputs: np.ndarray) -> np.ndarray:
        """The class probabilities of the model's raw outputs."""
        return torch.softmax(torch.from_numpy(outputs), dim=1).numpy() if self.logits else outputs

    def probability_module(self) -> nn.Module:
        """A differentiable torch module of the class probabilities (the gradient methods')."""
        if self.file.module is None:
            raise RuntimeError(self.record["capabilities"]["torch_graph"])
        module = self.file.module
        if self.file.static_batch is not None and self.file.session is None:
            module = StaticBatch(module, self.file.static_batch)
        return nn.Sequential(module, nn.Softmax(dim=1)) if self.logits else module

    def with_weights(self, weights: dict[str, torch.Tensor]) -> RunModel:
        """This model with some weight tensors (by name) replaced: a module is copied, a program's graph is
        given them when traced."""
        if self._module_graph():
            module = copy.deepcopy(self.file.module)
            unknown = module.load_state_dict(weights, strict=False).unexpected_keys
            if unknown:
                raise KeyError(f"the model has no weights named {unknown[:3]}")
            return RunModel(dataclasses.replace(self.file, module=module), self.record)
        return RunModel(self.file, self.record, {**(self.replaced or {}), **weights})

    def weight_tensors(self) -> dict[str, np.ndarray]:
        """The tensors `with_weights` can replace, by the names it takes."""
        if self._module_graph():
            return {name: value.detach().cpu().numpy() for name, value in self.file.module.state_dict().items()}
        return self.file.parameters

    def _module_graph(self) -> bool:
        """DeepSHAP traces the module itself (the reference model, an ONNX file's conversion)."""
        return self.file.program is None and self.file.format != "torchscript"

    def deepshap_graph(self, example: torch.Tensor):
        """What the engine traces: an ExportedProgram, or a module it traces itself."""
        if self.file.format == "torchscript":
            return _torchscript_program(self.file.module, example.cpu())
        if self.file.program is not None:
            return self.file.program
        return self.file.module

    def layer_weights(self) -> list[str]:
        """Names of the file's layer weights (matrices and kernels), input to output."""
        return weight_matrices(self.file.parameters)


def weight_matrices(tensors: dict[str, np.ndarray]) -> list[str]:
    """Names of the floating-point tensors with two or more dimensions (layer weights, not biases)."""
    return [name for name, value in tensors.items() if value.ndim >= 2 and np.issubdtype(value.dtype, np.floating)]


_TS_PROGRAMS: dict[int, tuple] = {}
_TS_LOCK = threading.Lock()


def _torchscript_program(module, example: torch.Tensor):
    """A TorchScript module as an ExportedProgram (torch.export's converter), once per module."""
    from torch._export.converter import TS2EPConverter

    with _TS_LOCK:
        if id(module) not in _TS_PROGRAMS or _TS_PROGRAMS[id(module)][0] is not module:
            _TS_PROGRAMS.clear()
            _TS_PROGRAMS[id(module)] = (module, TS2EPConverter(module, (example[:2],)).convert())
        return _TS_PROGRAMS[id(module)][1]


def load_run_model(record_path: Path | str) -> RunModel:
    """The model the record at `record_path` (a run's model/model.json) names, checked against its hash."""
    record_path = Path(record_path)
    record = json.loads(record_path.read_text())
    path = record_path.parent.parent / record["file"]
    if sha256_file(path) != record["sha256"]:
        raise InputError(f"{path}: the model file changed since the run recorded it (SHA-256 differs)")
    model = open_model(path, record["format"])
    if record.get("conversion", {}).get("converted"):  # checked against onnxruntime when the run began
        convert_onnx(model)
    return RunModel(model, record)


def detect_outputs(outputs: np.ndarray, declared: str | None, path: Path) -> str:
    """logits or probabilities: as declared, or detected (every row in [0, 1] summing to 1)."""
    sums_to_one = bool(np.all(outputs >= 0) and np.all(outputs <= 1)
                       and np.allclose(outputs.sum(1), 1.0, atol=PROBABILITY_TOLERANCE))
    if declared == "probabilities" and not sums_to_one:
        raise InputError(f"--model {path}: --outputs probabilities, but its output rows are not probabilities "
                         "(each in [0, 1], summing to 1)")
    return declared or ("probabilities" if sums_to_one else "logits")


def write_record(path: Path, record: dict) -> dict:
    write_json_atomic(path, record)
    return record


def write_trained_record(run_dir: Path, input_shape: list[int], n_classes: int) -> dict:
    """The model record of the reference model trained into `run_dir` (its weights already written)."""
    weights = layout.path(run_dir, "weights")
    return write_record(layout.path(run_dir, "model"), {
        "source": "trained", "format": "safetensors", "file": layout.FILES["weights"], "sha256": sha256_file(weights),
        "size_bytes": weights.stat().st_size, "outputs": "logits", "input_shape": input_shape,
        "n_outputs": n_classes, "capabilities": {name: None for name in CAPABILITIES}})
