import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch import nn

from tasks.report.figures import first_conv_filters, weight_histograms
from tasks.run import layout
from tasks.techniques.weights import inspect_weights, weight_statistics


def test_statistics_have_known_answers(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(18.0).reshape(2, 1, 3, 3) / 10)  # 0.0 .. 1.7
        model[0].bias.zero_()
        model[2].weight.fill_(-2.0)
        model[2].bias.copy_(torch.tensor([3.0, 4.0]))
    stats = weight_statistics({name: p.detach().numpy() for name, p in model.named_parameters()},
                              {name: type(m).__name__ for name, m in model.named_modules()})
    assert list(stats["layer"]) == ["0", "0", "2", "2"] and list(stats["tensor"]) == ["weight", "bias"] * 2
    conv = stats.iloc[0]
    assert conv["shape"] == "2x1x3x3" and conv["count"] == 18 and conv["module"] == "Conv2d"
    assert conv["mean"] == pytest.approx(0.85) and conv["max"] == pytest.approx(1.7)
    assert conv["near_zero_share"] == pytest.approx(1 / 18)
    assert stats.iloc[1]["near_zero_share"] == 1.0  # zero bias
    assert stats.iloc[3]["l2_norm"] == pytest.approx(5.0) and stats.iloc[2]["l1_norm"] == pytest.approx(8.0)


def test_the_step_writes_one_row_per_parameter_tensor_of_a_saved_model(tmp_path):
    from tasks.model.reference import MLPConfig, build_reference_mlp, save_weights
    from tasks.model.run_model import write_trained_record

    model = build_reference_mlp(MLPConfig(in_features=5, num_classes=3))
    save_weights(layout.path(tmp_path, "weights"), model, MLPConfig(in_features=5, num_classes=3), {})
    write_trained_record(tmp_path, [5], 3)
    result = inspect_weights(str(tmp_path), layout.paths(tmp_path, ["model"]), 0)
    table = pq.read_table(result["files"]["weight_statistics"]["path"])
    assert table.num_rows == len(list(model.parameters())) == 6 and result["checks"] == []


def test_figures_are_png(tmp_path):
    from tasks.model.reference import CNNConfig, build_reference_cnn

    model = build_reference_cnn(CNNConfig(in_channels=3, num_classes=4))
    layers = {name: p.detach().numpy() for name, p in model.named_parameters() if p.ndim >= 2}
    first = next(iter(layers.values()))
    for path in (weight_histograms(layers, tmp_path / "h.png"), first_conv_filters(first, tmp_path / "f.png")):
        image = Image.open(path)
        assert image.format == "PNG" and np.asarray(image).std() > 0
