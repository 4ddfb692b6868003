"""Open torch archives a user gave without ever reaching an unsafe unpickler.

`torch.export.load` is not safe on untrusted files: a record it cannot read with the `weights_only`
loader (the sample inputs, legacy weight and constant files) is retried with
`torch.load(weights_only=False)`, payloads marked `use_pickle` go straight to it, opaque constants to
`pickle.loads`, and AOTInductor entries load compiled shared libraries. A pickle in any of them runs
its code as the file is opened. So the archive is read once into memory and its records checked here
first (`check_export_archive`): every record that torch may unpickle must load with torch's
`weights_only` loader, and compiled code and Python objects are refused. Then the very same bytes are
loaded (`load_export`) with `torch.load` held to `weights_only=True`, in case torch unpickles a record
this check does not know of.

TorchScript's own reader resolves only TorchScript types; its pickles are checked as well
(`check_torchscript_archive`), so a look-alike archive is refused by name before that reader runs.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import pickletools
import threading
import warnings
import zipfile
from pathlib import Path

import torch

from tasks.run.errors import InputError, first_line

TEXT_RECORDS = frozenset({"archive_format", "archive_version", "byteorder", "version", ".data/version",
                          ".data/serialization_id"})  # read as text by torch, never unpickled
PAYLOAD_CONFIGS = {"data/weights/": "_weights_config.json", "data/constants/": "_constants_config.json"}
CODE_OBJECTS = ("custom_obj", "opaque_obj")  # constants torch rebuilds with TorchScript's or Python's pickle
TORCHSCRIPT_GLOBALS = ("__torch__.", "torch.", "torch ", "collections ")  # what TorchScript's pickles name

_LOAD_LOCK = threading.Lock()  # torch.export.load keeps a global deserializer; torch.load is held while loading
_TORCH_LOGGERS = ("torch.export", "torch._export")


def _records(data: bytes, path: Path) -> tuple[zipfile.ZipFile, dict[str, str]]:
    """The archive and its records by their name inside the archive's one top folder (`model/data/x` -> `data/x`)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InputError(f"--model {path}: a damaged or truncated archive ({first_line(exc)})") from None
    return archive, {name.split("/", 1)[1] if "/" in name else name: name for name in names}


def _refuse(path: Path, record: str, why: str) -> InputError:
    return InputError(f"--model {path}: its record {record!r} {why}; opening it could run code, so the file is "
                      "refused (re-export the model with torch.export.save from a trusted environment)")


def check_export_archive(data: bytes, path: Path) -> None:
    """InputError unless every record of the torch.export archive `data` can be read without running code."""
    archive, records = _records(data, path)
    raw = set()  # records torch reads as raw tensor bytes (torch.frombuffer), never unpickled
    for inner, name in records.items():
        folder = next((f for f, suffix in PAYLOAD_CONFIGS.items()
                       if inner.startswith(f) and inner.endswith(suffix)), None)
        if folder is None:
            continue
        try:
            entries = json.loads(archive.read(name))["config"].items()
        except (ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile) as exc:
            raise InputError(f"--model {path}: its record {inner!r} is not a readable payload list "
                             f"({first_line(exc)})") from None
        for fqn, entry in entries:
            file = str(entry.get("path_name", "")) if isinstance(entry, dict) else ""
            if file.startswith(CODE_OBJECTS):
                raise _refuse(path, folder + file, f"holds a Python object ({fqn}) that torch rebuilds with pickle")
            if not entry.get("use_pickle"):
                raw.add(folder + file)
    for inner, name in records.items():
        if inner.startswith("data/aotinductor/"):
            raise _refuse(path, inner, "is AOTInductor compiled code, which torch loads as a shared library")
        if inner in raw or inner in TEXT_RECORDS or inner.endswith(".json") or inner.startswith("extra/"):
            continue
        _check_weights_only(archive.read(name), path, inner)


def _check_weights_only(blob: bytes, path: Path, record: str) -> None:
    """InputError unless `blob` (a record torch may give to torch.load) loads with torch's weights_only loader."""
    if not blob:
        return
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4": the refusal below says what matters
            warnings.simplefilter("ignore")
            torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - the safe loader's refusal or a damaged record: either is refused
        raise _refuse(path, record, f"is a pickle that torch's safe (weights_only) loader refuses "
                                    f"({_safe_loader_reason(exc)})") from None


def _safe_loader_reason(exc: BaseException) -> str:
    """The line of torch's weights_only refusal that says why ("unsupported GLOBAL posix.system ..."), without the
    paragraphs of advice around it."""
    advice = ("Weights only load failed", "Please file an issue", "Check the documentation", "WeightsUnpickler error")
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.strip().startswith(advice)]
    return (lines[0] if lines else first_line(exc))[:160]


@contextlib.contextmanager
def _weights_only_loads():
    """`torch.load` held to weights_only=True, and torch's logged tracebacks kept off the console, while loading."""
    unsafe_load = torch.load

    def load(*args, **kwargs):
        kwargs["weights_only"] = True
        return unsafe_load(*args, **kwargs)

    handler = _Collect()
    loggers = [logging.getLogger(name) for name in _TORCH_LOGGERS]
    saved = [(logger.propagate, logger.level, logger.handlers) for logger in loggers]
    torch.load = load
    for logger in loggers:  # torch gives "torch.export" a stderr handler of its own: set aside while loading
        logger.handlers = [handler]
        logger.propagate = False
        logger.setLevel(logging.WARNING)
    try:
        yield handler
    finally:
        torch.load = unsafe_load
        for logger, (propagate, level, handlers) in zip(loggers, saved):
            logger.handlers, logger.propagate, logger.level = handlers, propagate, level


class _Collect(logging.Handler):
    """The first error torch logged (it logs a traceback, then raises a message saying "see the warnings above")."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.cause: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.cause is None and record.exc_info and record.exc_info[1] is not None:
            self.cause = first_line(record.exc_info[1])


def load_export(data: bytes, path: Path) -> torch.export.ExportedProgram:
    """The exported program in the archive bytes `data`, checked first; InputError in one line otherwise."""
    check_export_archive(data, path)
    with _LOAD_LOCK, _weights_only_loads() as logged:  # the SHAP shards of a run open the model in parallel threads
        try:
            return torch.export.load(io.BytesIO(data))
        except Exception as exc:  # noqa: BLE001 - any failure of torch's reader: the file cannot be used
            cause = logged.cause or first_line(exc)
    raise InputError(f"--model {path}: cannot load this torch.export file: {cause}")


def check_torchscript_archive(data: bytes, path: Path) -> None:
    """InputError unless every pickle of the TorchScript archive `data` names only TorchScript and torch types."""
    archive, records = _records(data, path)
    for inner, name in records.items():
        if inner.endswith(".pkl"):
            for global_name in _pickle_globals(archive.read(name), path, inner):
                if not global_name.startswith(TORCHSCRIPT_GLOBALS):
                    raise _refuse(path, inner, f"is a pickle naming {global_name!r}, not a TorchScript type")


def _pickle_globals(blob: bytes, path: Path, record: str) -> list[str]:
    """The `module name` of every GLOBAL in a pickle, read without running it. TorchScript writes GLOBAL only;
    a pickle that builds its names on the stack (STACK_GLOBAL, INST, OBJ) is not one of its pickles."""
    names = []
    try:
        for opcode, argument, _ in pickletools.genops(blob):
            if opcode.name == "GLOBAL":
                names.append(str(argument))
            elif opcode.name in ("STACK_GLOBAL", "INST", "OBJ", "EXT1", "EXT2", "EXT4"):
                raise _refuse(path, record, f"is a pickle using {opcode.name}, which TorchScript never writes")
    except (ValueError, EOFError) as exc:
        raise InputError(f"--model {path}: its record {record!r} is not a readable pickle ({first_line(exc)})") \
            from None
    return names


def load_torchscript(data: bytes, path: Path) -> torch.jit.ScriptModule:
    """The TorchScript module in the archive bytes `data`, its pickles checked first."""
    check_torchscript_archive(data, path)
    return torch.jit.load(io.BytesIO(data), map_location="cpu").eval()
