"""Validating a model the user supplies (--model FILE): every accepted format, made here with random weights."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pypdf import PdfReader
from torch import nn

from tasks.data.sources import load_dataset
from tasks.deepshap.agnostic import kernel_engine
from tasks.deepshap.engine import model_engine
from tasks.model.formats import detect_format
from tasks.model.run_model import RunModel, load_run_model
from tasks.model.supplied import check_conversion, open_model
from tasks.run import layout
from tasks.run.artifacts import sha256_file
from tasks.run.errors import InputError
from tasks.steps.load import load_data
from tasks.steps.supplied import capabilities, fit_data_to_model, supplied_model
from tests.conftest import run_report, write_cifar10


def export(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    torch.export.save(program, str(path))
    return path


def mlp(features: int, classes: int, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, 16), nn.Tanh(), nn.Linear(16, classes)).eval()


def onnx_export(model: nn.Module, example: torch.Tensor, path: Path, **options) -> Path:
    torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["x"], output_names=["scores"],
                      dynamic_axes={"x": {0: "n"}, "scores": {0: "n"}}, **options)
    return path


class FunctionalCNN(nn.Module):
    """Activations as functions, not modules: what TorchScript users write."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3, stride=2)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.nn.functional.relu(self.conv1(x))
        x = torch.nn.functional.max_pool2d(x, 2)
        x = torch.sigmoid(self.conv2(x))
        return self.head(x.mean((2, 3)))


# -- formats ---------------------------------------------------------------------------------------

def test_the_format_is_read_from_the_content_not_the_name(tmp_path):
    torch.manual_seed(0)
    model = mlp(4, 3)
    disguised = export(model, torch.rand(2, 4), tmp_path / "model.onnx")  # a torch.export archive, misnamed
    assert detect_format(disguised) == "torch.export"
    script = tmp_path / "model.pt2"
    torch.jit.save(torch.jit.script(model), str(script))
    assert detect_format(script) == "torchscript"
    assert detect_format(onnx_export(model, torch.rand(2, 4), tmp_path / "m.bin")) == "onnx"


@pytest.mark.parametrize("make, message", [
    (lambda p: torch.save(mlp(4, 3), p), "is a Python pickle .* torch.export.save"),
    (lambda p: torch.save(mlp(4, 3).state_dict(), p), "is a Python pickle"),
    (lambda p: p.write_bytes(b"\x80\x04\x95" + bytes(20)), "is a Python pickle"),
    (lambda p: p.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(20)), "HDF5 .* tf2onnx"),
    (lambda p: p.write_bytes(b"GIF89a not a model at all"), "unknown model format"),
    (lambda p: p.write_bytes(b""), "the file is empty"),
])
def test_files_that_are_not_models_are_refused_naming_the_file(tmp_path, make, message):
    path = tmp_path / "model.pt"
    make(path)
    with pytest.raises(InputError, match=message) as caught:
        detect_format(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_a_truncated_archive_is_refused(tmp_path):
    whole = export(mlp(4, 3), torch.rand(2, 4), tmp_path / "whole.pt2").read_bytes()
    cut = tmp_path / "cut.pt2"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match=f"{cut}: (a damaged or truncated archive|cannot load)"):
        open_model(cut)


# -- fitting the data to the model -----------------------------------------------------------------

def test_images_are_fitted_to_the_models_input_size_and_channels(tmp_path):
    torch.manual_seed(0)
    gray = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.LazyLinear(10))
    gray(torch.rand(1, 1, 20, 20))
    path = tmp_path / "gray20.pt2"
    torch.export.save(torch.export.export(gray.eval(), (torch.rand(2, 1, 20, 20),)), str(path))  # fixed batch 2
    data = load_dataset(f"cifar10:{write_cifar10(tmp_path / 'c', per_batch=20)}")  # RGB 32x32
    fitted, facts = fit_data_to_model(data, path, None)
    assert fitted.inputs.shape[1:] == (1, 20, 20) and facts["outputs"] == "logits"
    assert "grayscale" in fitted.provenance["fitted to the model"] and "20x20" in fitted.provenance["fitted to the model"]
    model = open_model(path)
    assert model.static_batch == 2 and model.run(fitted.inputs[:5]).shape == (5, 10)  # padded to its batch size


@pytest.mark.parametrize("model, message", [
    (mlp(5, 2), "takes 5 features; dataset breast-cancer has 30"),
    (mlp(30, 3), "has 3 outputs; dataset breast-cancer has 2 classes"),
    (nn.Sequential(mlp(30, 2), nn.Threshold(1e9, float("nan"))), "returns NaN or infinite outputs on 569 of 569 rows"),
    (nn.Sequential(nn.Linear(30, 2), nn.Flatten(0)), r"returns outputs of shape \(1138,\)"),
])
def test_a_model_that_cannot_take_the_data_is_refused_before_the_run_directory_exists(tmp_path, model, message):
    path = export(model, torch.rand(3, 30 if "takes 5" not in message else 5), tmp_path / "m.pt2")
    with pytest.raises(InputError, match=message):
        load_data("breast-cancer", tmp_path / "out", seed=0, val_fraction=0.2, model=path)
    assert not (tmp_path / "out").exists()


def test_an_onnx_file_with_two_inputs_is_refused(tmp_path):
    class Two(nn.Module):
        def forward(self, a, b):
            return a + b

    path = tmp_path / "two.onnx"
    torch.onnx.export(Two(), (torch.rand(2, 3), torch.rand(2, 3)), str(path), dynamo=False, input_names=["a", "b"])
    with pytest.raises(InputError, match="the ONNX graph has 2 inputs \\(a, b\\)"):
        open_model(path)


def test_bad_models_end_in_one_line_and_exit_2_from_the_cli(tmp_path, capsys):
    from flows.cli import main

    pickled = tmp_path / "model.pt"
    torch.save(mlp(30, 2), pickled)
    out = tmp_path / "reports"
    environment = dict(os.environ)
    assert main(["run", "--model", str(pickled), "--dataset", "breast-cancer", "--out", str(out)]) == 2
    assert dict(os.environ) == environment  # it once left Prefect's console at WARNING for the whole test process

    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and str(pickled) in error and "torch.export.save" in error
    assert not out.exists()


# -- each route ------------------------------------------------------------------------------------

def test_a_torchscript_cnn_with_functional_activations_is_explained_exactly(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "cnn.pt"
    torch.jit.save(torch.jit.script(FunctionalCNN().eval()), str(path))
    model = open_model(path)
    assert model.format == "torchscript" and ("aten::conv2d", 2) in model.operations
    images = np.random.default_rng(0).random((6, 3, 16, 16), dtype=np.float32)
    found = capabilities(model, images[:2], "logits")
    assert found == {"torch_graph": None, "deepshap": None}
    run_model = RunModel(model, {"outputs": "logits", "capabilities": found, "source": "supplied"})
    background = torch.from_numpy(images[:4])
    engine = model_engine(run_model, background)
    values = engine.shap_values(torch.from_numpy(images[4:]))
    probs = run_model.predict_proba(images[4:])
    reference = run_model.predict_proba(images[:4]).mean(0)
    np.testing.assert_allclose(values.reshape(2, 10, -1).sum(-1), probs - reference, atol=1e-6)


def test_a_pytorch_mlp_through_onnx_is_converted_back_and_explained_exactly(tmp_path):
    path = onnx_export(mlp(6, 3), torch.rand(2, 6), tmp_path / "mlp.onnx")
    model = open_model(path)
    inputs = np.random.default_rng(1).normal(size=(40, 6)).astype(np.float32)
    conversion = check_conversion(model, inputs)
    assert conversion["converted"] and conversion["max_difference"] < 1e-5
    found = capabilities(model, inputs[:2], "logits")
    assert found["deepshap"] is None
    run_model = RunModel(model, {"outputs": "logits", "capabilities": found, "source": "supplied"})
    engine = model_engine(run_model, torch.from_numpy(inputs[:20]))
    values = engine.shap_values(torch.from_numpy(inputs[20:]))
    probs = run_model.predict_proba(inputs[20:])  # onnxruntime's, the deployed model's
    np.testing.assert_allclose(values.sum(-1), probs - run_model.predict_proba(inputs[:20]).mean(0), atol=1e-5)


def sklearn_onnx(estimator, x, y, path: Path) -> Path:
    from skl2onnx import to_onnx

    estimator.fit(x, y)
    path.write_bytes(to_onnx(estimator, x[:1].astype(np.float32)).SerializeToString())
    return path


def test_kernel_shap_of_a_scikit_learn_logistic_pipeline_in_onnx_is_the_closed_form_on_the_logit(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_dataset("breast-cancer")
    x, y = data.inputs[:, :6].astype(np.float64), data.labels
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    model = open_model(sklearn_onnx(pipeline, x, y, tmp_path / "scorecard.onnx"))
    conversion = check_conversion(model, x[:50].astype(np.float32))
    assert not conversion["converted"] and "onnx2torch" in conversion["reason"]  # ai.onnx.ml operators
    run_model = RunModel(model, {"outputs": "probabilities", "capabilities": {}, "source": "supplied"})
    np.testing.assert_allclose(run_model.predict_proba(x[:20].astype(np.float32)), pipeline.predict_proba(x[:20]),
                               atol=1e-5)

    def logit(rows: np.ndarray) -> np.ndarray:
        p = run_model.predict_proba(rows)
        return np.log(p) - np.log(p[:, ::-1])  # per class: its logit against the other

    mean = x.mean(0, keepdims=True)
    values = kernel_engine(logit, torch.from_numpy(mean), seed=0)(torch.from_numpy(x[:5]))
    scaler, logistic = pipeline
    w = logistic.coef_[0] / scaler.scale_
    closed_form = w * (x[:5] - mean)  # in float64; the ONNX graph computes in float32
    np.testing.assert_allclose(values[:, 1], closed_form, atol=2e-3 * np.abs(closed_form).max())
    np.testing.assert_allclose(values[:, 0], -closed_form, atol=2e-3 * np.abs(closed_form).max())


@pytest.fixture(scope="module")
def trees_run(prefect_server, tmp_path_factory):
    from sklearn.ensemble import GradientBoostingClassifier

    tmp = tmp_path_factory.mktemp("trees")
    data = load_dataset("breast-cancer")
    path = sklearn_onnx(GradientBoostingClassifier(n_estimators=20, max_depth=2, random_state=0), data.inputs,
                        data.labels, tmp / "trees.onnx")
    _, result = run_report(tmp / "runs", dataset="breast-cancer", model=str(path), background=12, explain_rows=6)
    return path, result


def test_a_gradient_boosting_model_in_onnx_gets_the_model_agnostic_techniques_and_the_report_says_why(trees_run):
    path, result = trees_run
    run_dir, results = Path(result["run_dir"]), result["results"]
    assert "train" not in results and results["model"]["format"] == "onnx"
    assert results["gradients"]["skipped"].startswith("Not available for this model: no torch graph: onnx2torch cannot")
    assert results["faithfulness"]["skipped"] == results["gradients"]["skipped"]
    for ran in ("weights", "slices", "permutation-importance", "partial-dependence", "kernel-shap", "lime"):
        assert "files" in results[ran], ran
    assert results["deepshap"]["engine"] == "kernel" and result["max_additivity_error"] < 1e-6
    record = json.loads(layout.path(run_dir, "model").read_text())
    assert record["sha256"] == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    assert layout.path(run_dir, "model_onnx").read_bytes() == path.read_bytes()
    text = " ".join(" ".join(page.extract_text().split()) for page in PdfReader(result["pdf"]).pages)
    assert "Model under validation" in text and record["sha256"] in text.replace(" ", "")
    assert "Saliency and Integrated Gradients Not available for this model: no torch graph" in text
    assert "on all 569 evaluation rows" in text
    # The SHAP stage fell back to Kernel SHAP: no sentence calls its values DeepSHAP, and Kernel SHAP is counted once
    assert "Explanations of individual decisions: Kernel SHAP" in text
    for claim in ("exact DeepSHAP values", "Mean absolute DeepSHAP value", "DeepSHAP values must add up",
                  "largest DeepSHAP values", "Explanations of individual decisions: DeepSHAP"):
        assert claim not in text, claim
    checks = [c["id"] for c in json.loads(layout.path(run_dir, "manifest").read_text())["checks"]]
    assert "kernel-shap.additivity" not in checks and checks.count("deepshap.additivity") == 1
    agreement = pd.read_parquet(layout.path(run_dir, "agreement"))
    assert not (agreement["method_a"].str.startswith("Kernel SHAP")
                & agreement["method_b"].str.startswith("Kernel SHAP")).any()
    # No card: no intended use, an unknown evaluation lineage (a moderate finding), a technical assessment
    assert result["verdict"] == "Technical assessment only: no intended use declared"
    (lineage,) = [c for c in json.loads(layout.path(run_dir, "manifest").read_text())["checks"]
                  if c["id"] == "data.lineage"]
    assert lineage["status"] == "failed" and lineage["severity"] == "moderate"


@pytest.fixture(scope="module")
def resnet_run(prefect_server, tmp_path_factory):
    import torchvision

    tmp = tmp_path_factory.mktemp("resnet")
    torch.manual_seed(0)
    path = export(torchvision.models.resnet18(num_classes=10), torch.rand(2, 3, 32, 32), tmp / "resnet.pt2")
    cifar = write_cifar10(tmp / "cifar", per_batch=30)
    _, result = run_report(tmp / "runs", dataset=f"cifar10:{cifar}", model=str(path), background=6, explain_rows=2)
    return path, result


def test_a_resnet18_exported_with_torch_export_gets_the_whole_report_with_exact_deepshap(resnet_run):
    path, result = resnet_run
    results = result["results"]
    assert results["model"]["capabilities"] == {"torch_graph": None, "deepshap": None}
    assert results["deepshap"]["engine"] == "fast" and result["max_additivity_error"] < 1e-5
    assert all("files" in results[name] for name in ("gradients", "faithfulness", "kernel-shap", "lime", "weights"))
    model = load_run_model(layout.path(result["run_dir"], "model"))
    assert model.record["parameters"] == sum(p.numel() for p in __import__("torchvision").models.resnet18(
        num_classes=10).state_dict().values() if p.is_floating_point()) + 20  # + batch norms' counters
    text = " ".join(" ".join(page.extract_text().split()) for page in PdfReader(result["pdf"]).pages)
    assert "Model under validation" in text and "torch.export" in text and "aten.conv2d" in text
    # Random weights: every normalisation layer at its initial values, a material finding (no card: graded only)
    checks = {c["id"]: c for c in json.loads(layout.path(result["run_dir"], "manifest").read_text())["checks"]}
    assert checks["model.untrained"]["status"] == "failed" and checks["model.untrained"]["value"] == 1.0
    from tasks.report.build import run_checks
    from tasks.run.verdict import NOT_FIT, derive

    assert derive(run_checks(results), True).text == NOT_FIT


def test_explain_image_and_verify_work_on_a_run_of_a_supplied_model(resnet_run, tmp_path):
    from PIL import Image

    from tasks.report.own_image import explain_image
    from tasks.run.verify import verify_run

    _, result = resnet_run
    path = tmp_path / "mine.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(path)
    explained = explain_image(path, Path(result["run_dir"]), tmp_path / "out")
    assert explained["additivity_error"] < 1e-5 and Path(explained["pdf"]).is_file()
    assert verify_run(Path(result["run_dir"])) == []
    layout.path(result["run_dir"], "model_pt2").write_bytes(b"PK swapped")
    assert any("model/model.pt2" in problem for problem in verify_run(Path(result["run_dir"])))


def test_an_onnx_table_model_with_one_input_per_column_is_fed_by_column_name(tmp_path):
    import pandas as pd
    from skl2onnx import to_onnx
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"income": rng.normal(50, 10, 200), "debt": rng.normal(20, 5, 200)})
    frame["defaulted"] = np.where(frame["debt"] * 2 - frame["income"] + rng.normal(0, 3, 200) > -10, "yes", "no")
    features = frame[["income", "debt"]].astype(np.float32)
    columns = ColumnTransformer([("scale", StandardScaler(), ["income", "debt"])])
    classifier = make_pipeline(columns, LogisticRegression()).fit(features, frame["defaulted"])
    path = tmp_path / "named.onnx"
    path.write_bytes(to_onnx(classifier, features[:1], options={"zipmap": False}).SerializeToString())
    model = open_model(path)
    assert model.column_inputs == ["income", "debt"] and model.input_shape == [2]

    shuffled = tmp_path / "applicants.csv"  # other column order, and a column the model does not take
    frame.assign(age=rng.integers(20, 70, 200))[["debt", "age", "defaulted", "income"]].to_csv(shuffled, index=False)
    data, facts = fit_data_to_model(load_dataset(f"csv:{shuffled}", "defaulted"), path, None)
    assert data.feature_names == ["income", "debt"] and facts["outputs"] == "probabilities"
    assert "not used by the model: age" in data.provenance["fitted to the model"]
    np.testing.assert_allclose(model.run(data.inputs), classifier.predict_proba(features), atol=1e-5)
    frame[["debt", "defaulted"]].to_csv(shuffled, index=False)
    with pytest.raises(InputError, match="takes columns the dataset .* does not have: income"):
        fit_data_to_model(load_dataset(f"csv:{shuffled}", "defaulted"), path, None)


class ChannelsLastCNN(nn.Module):
    """Takes (n, H, W, C) images, as Keras models exported with tf2onnx do."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))

    def forward(self, x):
        return self.net(x.permute(0, 3, 1, 2))


def test_a_channels_last_onnx_image_model_takes_the_pipelines_images_and_converts_exactly(tmp_path):
    torch.manual_seed(0)
    network = ChannelsLastCNN().eval()
    path = onnx_export(network, torch.rand(2, 16, 16, 3), tmp_path / "keras-like.onnx")
    model = open_model(path)
    assert model.channels_last and model.input_shape == [3, 16, 16]
    images = np.random.default_rng(0).random((12, 3, 16, 16), dtype=np.float32)  # the pipeline's (n, C, H, W)
    expected = network(torch.from_numpy(images).permute(0, 2, 3, 1)).detach().numpy()
    np.testing.assert_allclose(model.run(images), expected, atol=1e-5)
    assert check_conversion(model, images)["converted"]
    run_model = RunModel(model, {"outputs": "logits", "capabilities": {}, "source": "supplied"})
    values = model_engine(run_model, torch.from_numpy(images[:8])).shap_values(torch.from_numpy(images[8:]))
    np.testing.assert_allclose(values.reshape(4, 10, -1).sum(-1),
                               run_model.predict_proba(images[8:]) - run_model.predict_proba(images[:8]).mean(0),
                               atol=1e-5)  # onnxruntime's probabilities: the conversion is within 1e-5 of them


def test_an_onnx_model_with_two_score_outputs_is_refused(tmp_path):
    class Two(nn.Module):
        def forward(self, x):
            return x * 2, x * 3

    path = tmp_path / "two-out.onnx"
    torch.onnx.export(Two(), (torch.rand(2, 3),), str(path), dynamo=False, input_names=["x"],
                      output_names=["a", "b"])
    with pytest.raises(InputError, match="cannot tell which ONNX output holds the class scores"):
        open_model(path)


def test_an_onnx_model_with_its_weights_in_external_data_is_copied_whole_into_the_run(tmp_path):
    """ONNX keeps the weights of a model saved with external data in files beside it. The run's copy holds them
    (the SHAP stage, minutes later, opened the copy alone and failed), the model record keeps the SHA-256 of each
    original file, and the copy computes what the original does."""
    import onnx
    import pandas as pd


    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(80, 4)), columns=list("abcd")).assign(label=lambda f: (f.a > 0).astype(int))
    frame.to_csv(tmp_path / "data.csv", index=False)
    user = tmp_path / "user"
    user.mkdir()
    exported = onnx.load(onnx_export(mlp(4, 2), torch.randn(2, 4), tmp_path / "exported.onnx"))
    onnx.save_model(exported, str(user / "scorecard.onnx"), save_as_external_data=True, location="scorecard.weights",
                    size_threshold=0)
    assert (user / "scorecard.weights").stat().st_size > 4 * (4 * 16 + 16 * 2)  # the weights are out there
    loaded = load_data(f"csv:{tmp_path / 'data.csv'}", tmp_path / "out", seed=0, val_fraction=0.25, label="label",
                       model=str(user / "scorecard.onnx"))
    run_dir = Path(loaded["run_dir"])
    supplied_model(str(user / "scorecard.onnx"), str(layout.path(run_dir, "train")),
                   str(layout.path(run_dir, "validation")), str(run_dir), "scores")
    record = json.loads(layout.path(run_dir, "model").read_text())
    assert record["original_files"] == {"scorecard.onnx": sha256_file(user / "scorecard.onnx"),
                                        "scorecard.weights": sha256_file(user / "scorecard.weights")}
    x = rng.normal(size=(5, 4)).astype(np.float32)
    expected = open_model(user / "scorecard.onnx").run(x)
    (user / "scorecard.weights").unlink()  # the copy must not need it
    np.testing.assert_array_equal(open_model(run_dir / record["file"]).run(x), expected)


class ReturnsNaN(nn.Module):
    def forward(self, x):
        return x[:, :2] * float("nan")


def test_a_model_file_swapped_between_the_load_and_the_model_step_is_refused(tmp_path):
    """The load step checks the file; the model step copies it and must use exactly the bytes that were checked."""
    path = export(mlp(30, 2), torch.rand(2, 30), tmp_path / "model.pt2")
    loaded = load_data("breast-cancer", tmp_path / "out", seed=0, val_fraction=0.2, model=path)
    run_dir = Path(loaded["run_dir"])
    assert loaded["model"]["sha256"] == sha256_file(path)
    export(ReturnsNaN(), torch.rand(2, 30), path)  # swapped in after the check: a model returning NaN
    with pytest.raises(InputError, match="changed after it was checked"):
        supplied_model(str(path), str(layout.path(run_dir, "train")), str(layout.path(run_dir, "validation")),
                       str(run_dir), "logits", checked_sha256=loaded["model"]["sha256"])
    assert not layout.path(run_dir, "model").exists()  # no record of a model the run did not check


def test_an_image_model_given_a_table_and_a_model_declaring_huge_inputs_are_named(tmp_path):
    """The digits CNN on table data is refused as an image model, not as "takes 1 features"; an ONNX file that
    declares 100000x100000 inputs is refused before anything allocates for it."""
    import onnx
    from onnx import TensorProto, helper

    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))
    path = tmp_path / "cnn.pt2"
    torch.export.save(torch.export.export(cnn.eval(), (torch.rand(2, 1, 8, 8),), dynamic_shapes=(
        {0: torch.export.Dim.AUTO, 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO},)), str(path))
    with pytest.raises(InputError, match=r"\(images: channels, height, width\); dataset breast-cancer is a table"):
        load_data("breast-cancer", tmp_path / "out", seed=0, val_fraction=0.2, model=path)
    graph = helper.make_graph([helper.make_node("ReduceSum", ["x"], ["y"], axes=[2], keepdims=0)], "huge",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 100000, 100000])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 100000])])
    huge = tmp_path / "huge.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), str(huge))
    with pytest.raises(InputError, match=r"10,000,000,000 values per row, over the 300,000,000"):
        load_data("breast-cancer", tmp_path / "out", seed=0, val_fraction=0.2, model=huge)
    assert not (tmp_path / "out").exists()
