import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from tasks.run.artifacts import sha256_file
from tasks.run.errors import InputError
from tasks.run.formats import read_split
from tasks.steps.load import load_data
from tasks.model.predict import probabilities
from tasks.model.reference import CNNConfig, build_reference_cnn, load_weights
from tasks.steps.train import predict_logits, train_model


def test_reference_cnn_shape_and_layers():
    model = build_reference_cnn(CNNConfig(in_channels=3, num_classes=10))
    convs = [m for m in model if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 8 and convs[-1].kernel_size == (1, 1)  # 7 conv layers + the 1x1 to classes
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model) == 3
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model) == 7
    out = probabilities(model).eval()(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10)
    torch.testing.assert_close(out.sum(1), torch.ones(2))


@pytest.fixture
def trained(imagefolder_dir, tmp_path):
    loaded = load_data(f"imagefolder:{imagefolder_dir}", tmp_path / "out", seed=0, val_fraction=0.25)
    result = train_model(loaded["files"]["train"]["path"], loaded["files"]["validation"]["path"], loaded["run_dir"],
                         epochs=3, batch_size=8, seed=0)
    return loaded, result


def test_training_writes_metrics_and_weights_that_reload(trained):
    loaded, result = trained
    metrics = pd.read_parquet(result["files"]["metrics"]["path"])
    assert list(metrics.columns) == ["epoch", "split", "loss", "accuracy", "precision_macro", "recall_macro", "f1_macro"]
    assert len(metrics) == 6 and set(metrics["split"]) == {"train", "validation"}
    assert metrics[["accuracy", "precision_macro", "recall_macro", "f1_macro"]].apply(lambda c: c.between(0, 1)).all().all()
    per_class = pd.read_parquet(result["files"]["metrics_per_class"]["path"])
    assert len(per_class) == 3 * 2 * 3 and set(per_class["class_name"]) == {"cats", "dogs", "owls"}
    last_val = per_class[(per_class.epoch == 3) & (per_class.split == "validation")]
    assert last_val["support"].sum() == 9

    model, config, training = load_weights(result["files"]["weights"]["path"])
    assert config.in_channels == 3 and config.num_classes == 3
    assert training["seed"] == 0 and training["epochs"] == 3
    val = read_split(loaded["files"]["validation"]["path"])
    accuracy = (predict_logits(model, val.inputs).argmax(1).numpy() == val.labels).mean()
    assert accuracy == pytest.approx(result["final_validation"]["accuracy"])


def test_training_is_deterministic_for_a_seed(trained, tmp_path):
    loaded, first = trained
    again = train_model(loaded["files"]["train"]["path"], loaded["files"]["validation"]["path"], tmp_path / "again",
                        epochs=3, batch_size=8, seed=0)

    assert sha256_file(again["files"]["weights"]["path"]) == sha256_file(first["files"]["weights"]["path"])
    other = train_model(loaded["files"]["train"]["path"], loaded["files"]["validation"]["path"], tmp_path / "other",
                        epochs=3, batch_size=8, seed=1)
    assert sha256_file(other["files"]["weights"]["path"]) != sha256_file(first["files"]["weights"]["path"])


def test_weights_that_do_not_fit_are_refused(trained, tmp_path):
    _, result = trained
    state = build_reference_cnn(CNNConfig(in_channels=1, num_classes=3)).state_dict()
    wrong = tmp_path / "wrong.safetensors"
    from safetensors import safe_open

    with safe_open(result["files"]["weights"]["path"], framework="pt") as handle:  # its metadata says 3 channels
        metadata = handle.metadata()
    save_file({k: v.contiguous() for k, v in state.items()}, str(wrong), metadata=metadata)
    with pytest.raises(InputError, match="do not fit the model"):
        load_weights(wrong)


def test_a_pickled_weights_file_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "model.safetensors"
    torch.save({"w": Payload()}, path)
    with pytest.raises(InputError, match="not a weights file written by accountability"):
        load_weights(path)
