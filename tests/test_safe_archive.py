"""Model files built to run code when opened: every one is refused, and its code never runs.

Each archive carries a pickle whose `__reduce__` writes a marker file; the test asserts the refusal (one line,
naming the record) and that the marker does not exist. The layouts are those torch itself reads: a
torch.export archive's sample inputs as a raw pickle and in torch.save's zip layout, a weight payload marked
`use_pickle`, an opaque constant, AOTInductor code, torch 2.7's older archive, and TorchScript and ONNX
look-alikes.
"""

import io
import json
import os
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tasks.model import safe_archive
from tasks.model.supplied import open_model
from tasks.run.errors import InputError
from tests.test_cli import cli_env

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling it runs `touch marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "PWNED"


@pytest.fixture
def archive(tmp_path):
    """A genuine torch.export archive of a small MLP."""
    path = tmp_path / "good.pt2"
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    torch.export.save(torch.export.export(model, (torch.rand(2, 4),)), str(path))
    return path


def rewrite(source: Path, target: Path, replace: dict[str, bytes], add: dict[str, bytes] = ()) -> Path:
    """`source` copied to `target` with the records whose names end with a key of `replace` replaced."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        top = src.namelist()[0].split("/", 1)[0]
        for info in src.infolist():
            data = src.read(info.filename)
            dst.writestr(info, next((new for end, new in replace.items() if info.filename.endswith(end)), data))
        for name, data in dict(add).items():
            dst.writestr(f"{top}/{name}", data)
    return target


def torch_saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def assert_refused(path: Path, marker: Path, pattern: str) -> str:
    with pytest.raises(InputError) as caught:
        open_model(path)
    message = str(caught.value)
    assert not marker.exists(), "the payload ran"
    assert "\n" not in message and str(path) in message and re.search(pattern, message), message
    return message


def test_a_genuine_archive_still_opens_and_runs(archive):
    model = open_model(archive)
    assert model.format == "torch.export" and model.run(np.zeros((5, 4), np.float32)).shape == (5, 3)


@pytest.mark.parametrize("layout", ["raw pickle", "torch.save zip"])
def test_sample_inputs_holding_a_pickle_are_refused_without_running_it(archive, marker, tmp_path, layout):
    payload = pickle.dumps(Payload(marker)) if layout == "raw pickle" else torch_saved(Payload(marker))
    evil = rewrite(archive, tmp_path / "evil.pt2", {"data/sample_inputs/model.pt": payload})
    assert_refused(evil, marker, r"record 'data/sample_inputs/model.pt' is a pickle .*weights_only.* refused")


def test_the_safe_loader_alone_stops_a_record_the_check_does_not_know(archive, marker, tmp_path, monkeypatch):
    """The second line of defence: with the record check switched off, torch.load is still held to weights_only."""
    evil = rewrite(archive, tmp_path / "evil.pt2", {"data/sample_inputs/model.pt": torch_saved(Payload(marker))})
    monkeypatch.setattr(safe_archive, "check_export_archive", lambda data, path: None)
    assert_refused(evil, marker, r"cannot load this torch.export file: .*")
    assert torch.load.__module__ == "torch.serialization"  # restored after the load


def test_a_weight_payload_marked_use_pickle_is_refused(archive, marker, tmp_path):
    with zipfile.ZipFile(archive) as src:
        name = next(n for n in src.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(src.read(name))
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    evil = rewrite(archive, tmp_path / "evil.pt2", {"model_weights_config.json": json.dumps(config).encode(),
                                                    f"data/weights/{first['path_name']}": torch_saved(Payload(marker))})
    assert_refused(evil, marker, rf"record 'data/weights/{first['path_name']}' is a pickle")


def test_an_opaque_constant_and_compiled_code_are_refused(archive, marker, tmp_path):
    constants = {"config": {"c": {"path_name": "opaque_obj0", "is_param": False, "use_pickle": True}}}
    opaque = rewrite(archive, tmp_path / "opaque.pt2", {"model_constants_config.json": json.dumps(constants).encode()},
                     {"data/constants/opaque_obj0": pickle.dumps(Payload(marker))})
    assert_refused(opaque, marker, r"'data/constants/opaque_obj0' holds a Python object")
    compiled = rewrite(archive, tmp_path / "aoti.pt2", {}, {"data/aotinductor/model/model.so": b"\x7fELF"})
    assert_refused(compiled, marker, r"AOTInductor compiled code")


def test_the_older_archive_layout_is_checked_too(marker, tmp_path):
    """torch 2.7's layout (a `version` record at the top, serialized_*.pt pickles), which torch.export.load still
    reads: the file type check calls it no model file, and the loader refuses its pickle on its own as well."""
    evil = tmp_path / "old.pt2"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("version", "8.0")
        archive.writestr("serialized_exported_program.json", "{}")
        archive.writestr("serialized_example_inputs.pt", pickle.dumps(Payload(marker)))
    assert_refused(evil, marker, r"neither a torch.export archive nor TorchScript")
    with pytest.raises(InputError, match="'serialized_example_inputs.pt' is a pickle"):
        safe_archive.load_export(evil.read_bytes(), evil)
    assert not marker.exists()


def test_a_torchscript_look_alike_is_refused_by_name(marker, tmp_path):
    genuine = tmp_path / "genuine.pt"
    torch.jit.save(torch.jit.script(nn.Sequential(nn.Linear(4, 3))), str(genuine))
    assert open_model(genuine).format == "torchscript"
    for protocol in (2, 4):
        evil = rewrite(genuine, tmp_path / f"evil{protocol}.pt", {"/data.pkl": pickle.dumps(Payload(marker),
                                                                                         protocol=protocol)})
        assert_refused(evil, marker, r"record 'data.pkl' is a pickle (naming 'posix system'|using STACK_GLOBAL)")


def test_an_onnx_look_alike_is_refused(marker, tmp_path):
    evil = tmp_path / "model.onnx"
    evil.write_bytes(b"\x08\x07" + pickle.dumps(Payload(marker)))
    assert_refused(evil, marker, r"not a valid ONNX model")


def test_the_command_line_refuses_the_archive_before_its_code_runs(archive, marker, tmp_path):
    evil = rewrite(archive, tmp_path / "evil.pt2", {"data/sample_inputs/model.pt": torch_saved(Payload(marker))})
    result = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--model", str(evil), "--dataset",
                             "breast-cancer", "--out", str(tmp_path / "reports")], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env=cli_env(tmp_path / "prefect"))
    assert result.returncode == 2 and not marker.exists()
    assert result.stderr.count("\n") == 1 and "is a pickle that torch's safe (weights_only) loader refuses" in \
        result.stderr, result.stderr
    assert not (tmp_path / "reports").exists() or not any((tmp_path / "reports").iterdir())


def test_no_other_module_calls_torchs_unpicklers():
    """Every path that opens a user's file (run, the model step, shards, challenger, explain-image, deployed runs)
    goes through tasks/model/safe_archive.py."""
    callers = [str(path.relative_to(ROOT)) for folder in ("tasks", "flows") for path in (ROOT / folder).rglob("*.py")
               if re.search(r"torch\.(load|export\.load|jit\.load)\(|pickle\.loads?\(", path.read_text())]
    assert callers == ["tasks/model/safe_archive.py"]


def test_a_hand_edited_archive_is_one_line_without_torchs_logged_tracebacks(archive, tmp_path, capfd):
    with zipfile.ZipFile(archive) as src:
        name = next(n for n in src.namelist() if n.endswith("models/model.json"))
        graph = json.loads(src.read(name))
    graph["graph_module"]["graph"]["nodes"][0]["target"] = "torch.ops.aten.no_such_operator.default"
    edited = rewrite(archive, tmp_path / "edited.pt2", {"models/model.json": json.dumps(graph).encode()})
    capfd.readouterr()
    with pytest.raises(InputError) as caught:
        open_model(edited)
    assert str(caught.value).startswith(f"--model {edited}: cannot load this torch.export file: ")
    assert "check the warnings above" not in str(caught.value) and "\n" not in str(caught.value)
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err + captured.out
