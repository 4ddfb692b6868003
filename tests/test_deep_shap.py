"""The fast DeepSHAP engine against shap.DeepExplainer (the reference) and closed-form answers."""

import numpy as np
import pytest
import shap
import torch
from torch import nn

from tasks.deepshap.engine import DeepShapEngine, UnsupportedModelError
from tasks.model.predict import probabilities
from tasks.model.reference import CNNConfig, build_reference_cnn


def settle_batchnorm(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """Give batch norms non-trivial running statistics, then switch to eval mode."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(32, *shape) * 2)
    return model.eval()


def reference_values(model, background, images) -> np.ndarray:
    values = shap.DeepExplainer(model, background).shap_values(images, check_additivity=False)
    return np.moveaxis(np.asarray(values), -1, 1)  # (n, K, *input)


def assert_matches_shap_and_adds_up(model, background, images, **engine_kwargs):
    engine = DeepShapEngine(model, background, **engine_kwargs)
    ours = engine.shap_values(images)
    ref = reference_values(model, background, images)
    assert ours.shape == ref.shape
    scale = np.abs(ref).max()
    assert np.abs(ours - ref).max() <= 1e-4 * scale
    with torch.no_grad():
        gap = (model(images) - model(background).mean(0)).numpy()
    assert np.abs(ours.reshape(*ours.shape[:2], -1).sum(-1) - gap).max() < 1e-5
    np.testing.assert_allclose(engine.expected_value.numpy(), model(background).mean(0).detach().numpy(), atol=1e-6)
    return ours


def test_reference_cnn_matches_shap():
    torch.manual_seed(0)
    cnn = build_reference_cnn(CNNConfig(in_channels=3, num_classes=5, widths=(4, 4, 6, 6, 8, 8, 8)))
    model = probabilities(settle_batchnorm(cnn, (3, 32, 32)))
    assert_matches_shap_and_adds_up(model, torch.rand(12, 3, 32, 32), torch.rand(3, 3, 32, 32))


def test_rules_are_shaps_to_float64_precision():
    """In float32, batch-dependent rounding flips DeepLIFT's near-zero cut-offs for a few units
    (shap forwards a joint batch, the engine does not); in float64 that noise vanishes."""
    torch.manual_seed(5)
    cnn = build_reference_cnn(CNNConfig(in_channels=3, num_classes=4, widths=(4, 4, 6, 6, 8, 8, 8)))
    model = probabilities(settle_batchnorm(cnn, (3, 32, 32))).double()
    background, images = torch.rand(10, 3, 32, 32).double(), torch.rand(2, 3, 32, 32).double()
    ours = DeepShapEngine(model, background).shap_values(images).astype(np.float64)
    ref = reference_values(model, background, images)
    assert np.abs(ours - ref).max() <= 1e-6 * np.abs(ref).max()  # float32 output rounding only


def test_odd_sizes_strides_avgpool_and_other_nonlinearities_match_shap():
    """Leftover rows after max-pooling, strided conv, average pool, sigmoid/tanh/ELU, linear head."""
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.Tanh(),  # 11x11 -> 6x6
        nn.Conv2d(4, 4, 2), nn.ELU(),  # 6x6 -> 5x5
        nn.MaxPool2d(2),  # 5x5 -> 2x2, the last row and column belong to no window
        nn.Sequential(nn.Conv2d(4, 6, 1), nn.Sigmoid()),
        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(6, 4), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4, 3),
        nn.Softmax(dim=1),
    )
    settle_batchnorm(model, (2, 11, 11))
    assert_matches_shap_and_adds_up(model, torch.rand(9, 2, 11, 11), torch.rand(2, 2, 11, 11))


def test_tabular_mlp_matches_shap():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(7, 64), nn.ReLU(), nn.Linear(64, 2), nn.Softmax(dim=1)).eval()
    values = assert_matches_shap_and_adds_up(model, torch.randn(20, 7), torch.randn(5, 7))
    assert values.shape == (5, 2, 7)


def test_linear_model_known_answer():
    """For f(x) = Wx + b the SHAP values are W * (x - mean(background)), exactly."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    background, images = torch.randn(30, 3, 2, 2), torch.randn(4, 3, 2, 2)
    values = DeepShapEngine(model, background).shap_values(images)
    expected = model[1].weight.detach().reshape(3, 3, 2, 2)[None] * (images - background.mean(0))[:, None]
    np.testing.assert_allclose(values, expected.numpy(), atol=1e-5)


def test_chunking_does_not_change_values():
    torch.manual_seed(4)
    cnn = build_reference_cnn(CNNConfig(in_channels=1, num_classes=3, widths=(4, 4, 4, 4, 4, 4, 4)))
    model = probabilities(settle_batchnorm(cnn, (1, 32, 32)))
    background, images = torch.rand(10, 1, 32, 32), torch.rand(5, 1, 32, 32)
    whole = DeepShapEngine(model, background, max_rows=10_000).shap_values(images)
    chunked = DeepShapEngine(model, background, max_rows=7).shap_values(images)  # 2 pairs per pass
    # Float32 sums in another order: equal to well within the 1e-4 (of the largest value) used against shap.
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-4 * np.abs(whole).max())


class Doubler(nn.Module):
    def forward(self, x):
        return 2 * x


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.LSTM(2, 2)), r"module 2 \(LSTM"),
        (nn.Sequential(nn.Conv2d(1, 1, 1), nn.MaxPool2d(3, stride=2), nn.Flatten()), "windows must not overlap"),
        (nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(4, 2), Doubler())), r"module 1\.1 \(Doubler"),
        (Doubler(), "needs an nn.Sequential model"),
    ],
    ids=["lstm", "overlapping-maxpool", "custom-module", "not-sequential"],
)
def test_unsupported_models_are_refused_by_name(model, message):
    with pytest.raises(UnsupportedModelError, match=message):
        DeepShapEngine(model, torch.rand(3, 1, 2, 2))
