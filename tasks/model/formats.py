"""What kind of model file a user gave: read from the file's first bytes and its archive listing, never its name.

Light on purpose (no torch, no onnx): preflight refuses a pickle or an unknown file before any work
starts. Loading is tasks/model/supplied.py.

Accepted: a torch.export archive (``torch.export.save``), TorchScript (``torch.jit.save``), ONNX,
and this project's own safetensors weights. Refused, each with how to export instead: a pickle
(``torch.save`` of a module or a state dict; loading one runs arbitrary code), a Keras HDF5 file.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

from tasks.run.errors import InputError

FORMATS = ("torch.export", "torchscript", "onnx", "safetensors")
HOW_TO_EXPORT = ("export it instead: torch.export.save(torch.export.export(model, (example_batch,)), 'model.pt2'), "
                 "or torch.jit.save(torch.jit.script(model), 'model.pt'), or torch.onnx.export to ONNX")
PICKLE = (f"is a Python pickle (torch.save of a module or a state dict); loading it would run arbitrary code, so it "
          f"is refused: {HOW_TO_EXPORT}")


def detect_format(path: Path) -> str:
    """One of FORMATS for the model file at `path`, or InputError naming the file and what it is instead."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--model {path}: " + ("not a regular file" if path.exists() else "no such file"))
    with path.open("rb") as handle:
        head = handle.read(16)
    size = path.stat().st_size
    if not head:
        raise InputError(f"--model {path}: the file is empty")
    if head.startswith(b"PK"):
        return _zip_format(path)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise InputError(f"--model {path} {PICKLE}")
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        raise InputError(f"--model {path} is an HDF5 file (a Keras .h5 model?): convert it to ONNX with tf2onnx "
                         "(python -m tf2onnx.convert --keras model.h5 --output model.onnx) and give that file")
    if len(head) >= 9:
        header_size = struct.unpack("<Q", head[:8])[0]
        if head[8:9] == b"{" and 8 + header_size <= size:
            return "safetensors"
    if _looks_like_onnx(head):
        return "onnx"
    raise InputError(f"--model {path}: unknown model format (not a torch.export archive, TorchScript, ONNX or "
                     "safetensors file)")


def _zip_format(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"--model {path}: a damaged or truncated archive ({exc})") from None
    inner = {name.split("/", 1)[1] for name in names if "/" in name}
    if "archive_format" in inner or any(name.startswith("models/") and name.endswith(".json") for name in inner):
        return "torch.export"
    if "data.pkl" in inner and any(name.startswith("code/") for name in inner):
        return "torchscript"
    if "data.pkl" in inner:
        raise InputError(f"--model {path} {PICKLE}")
    raise InputError(f"--model {path}: a zip archive that is neither a torch.export archive nor TorchScript")


def _looks_like_onnx(head: bytes) -> bool:
    """An ONNX ModelProto starts with one of its first fields: ir_version (1), opset_import (8) or producer (2)."""
    return head[:1] in (b"\x08", b"\x12", b"\x3a", b"\x42") and len(head) > 2


def safetensors_metadata(path: Path) -> dict:
    """The `__metadata__` of a safetensors file's JSON header (read without loading any tensor)."""
    with Path(path).open("rb") as handle:
        size = struct.unpack("<Q", handle.read(8))[0]
        try:
            header = json.loads(handle.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"--model {path}: a damaged safetensors header ({exc})") from None
    return header.get("__metadata__") or {}
