"""The graph DeepSHAP engine against shap.DeepExplainer in float64 (where shap is right) and known answers.

Exactness is shown against float64 references: shap on a float64 copy of the model, or a closed form.
Where shap is wrong (functional activations, modules used twice, overlapping max-pools), the test says
so and checks the engine's additivity and a model on which shap is right instead.
"""

import copy

import numpy as np
import pytest
import shap
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from tasks.deepshap.engine import DeepShapEngine, UnsupportedModelError, exact_float32, rows_for_memory
from tasks.model.predict import probabilities
from tasks.model.reference import CNNConfig, build_reference_cnn
from tests.resnets import one_relu_per_use


def settle_batchnorm(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """Give batch norms non-trivial running statistics, then switch to eval mode."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(32, *shape) * 2)
    return model.eval()


def reference_values(model, background, images) -> np.ndarray:
    """shap.DeepExplainer's values, (n, K, *input)."""
    values = shap.DeepExplainer(model, background).shap_values(images, check_additivity=False)
    return np.moveaxis(np.asarray(values), -1, 1)


def float64_reference(model, background, images) -> np.ndarray:
    return reference_values(copy.deepcopy(model).double(), background.double(), images.double())


def additivity_error(model, values, background, images) -> float:
    """Largest |sum of values - (f(x) - mean f(background))|, computed in float64."""
    model64 = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        gap = (model64(images.double()) - model64(background.double()).mean(0)).numpy()
    return float(np.abs(values.reshape(*values.shape[:2], -1).sum(-1, dtype=np.float64) - gap).max())


def assert_exact(model, background, images, reference_model=None):
    """The engine's float32 values within 1e-5 (of the largest value) of shap's float64 answer on
    `reference_model` (default: the model itself), and additive."""
    ours = DeepShapEngine(model, background).shap_values(images)
    ref = float64_reference(reference_model or model, background, images)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max()
    assert additivity_error(model, ours, background, images) <= 1e-6
    return ours, ref


def test_reference_cnn_float32_is_within_1e5_of_the_float64_answer_where_shaps_float32_is_not():
    torch.manual_seed(0)
    cnn = build_reference_cnn(CNNConfig(in_channels=3, num_classes=5, widths=(4, 4, 6, 6, 8, 8, 8)))
    model = probabilities(settle_batchnorm(cnn, (3, 32, 32)))
    background, images = torch.rand(12, 3, 32, 32), torch.rand(3, 3, 32, 32)
    ours, ref = assert_exact(model, background, images)
    shaps_float32 = reference_values(model, background, images)
    assert np.abs(shaps_float32 - ref).max() > 10 * np.abs(ours - ref).max()  # rounding amplified by rescale
    engine = DeepShapEngine(model, background)
    np.testing.assert_allclose(engine.expected_value.numpy(), model(background).mean(0).detach().numpy(), atol=1e-6)


def test_rules_are_shaps_to_float64_precision():
    torch.manual_seed(5)
    cnn = build_reference_cnn(CNNConfig(in_channels=3, num_classes=4, widths=(4, 4, 6, 6, 8, 8, 8)))
    model = probabilities(settle_batchnorm(cnn, (3, 32, 32))).double()
    background, images = torch.rand(10, 3, 32, 32).double(), torch.rand(2, 3, 32, 32).double()
    ours = DeepShapEngine(model, background).shap_values(images).astype(np.float64)
    ref = reference_values(model, background, images)
    assert np.abs(ours - ref).max() <= 1e-6 * np.abs(ref).max()  # float32 output rounding only


def test_odd_sizes_strides_avgpool_and_other_nonlinearities():
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
    assert_exact(model, torch.rand(9, 2, 11, 11), torch.rand(2, 2, 11, 11))


def test_tabular_mlp():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(7, 64), nn.ReLU(), nn.Linear(64, 2), nn.Softmax(dim=1)).eval()
    ours, _ = assert_exact(model, torch.randn(20, 7), torch.randn(5, 7))
    assert ours.shape == (5, 2, 7)


def test_linear_model_known_answer():
    """For f(x) = Wx + b the SHAP values are W * (x - mean(background)), exactly."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    background, images = torch.randn(30, 3, 2, 2), torch.randn(4, 3, 2, 2)
    values = DeepShapEngine(model, background).shap_values(images)
    expected = model[1].weight.detach().double().reshape(3, 3, 2, 2)[None] * \
        (images.double() - background.double().mean(0))[:, None]
    np.testing.assert_allclose(values, expected.numpy(), rtol=0, atol=1e-6 * expected.abs().max().item())


@pytest.mark.parametrize("activation", [nn.ReLU(), nn.LeakyReLU(0.1), nn.ELU(), nn.SELU(), nn.GELU(), nn.SiLU(),
                                        nn.Sigmoid(), nn.Tanh(), nn.Softplus(), nn.ReLU6(), nn.Hardtanh(-0.5, 0.5),
                                        nn.Mish(), nn.Hardswish()], ids=lambda a: type(a).__name__)
def test_elementwise_rule_known_answer(activation):
    """One element-wise layer then a linear one, one background sample: DeepLIFT's rescale rule gives
    exactly w_i (f(x_i) - f(b_i)) (the gradient at b where x_i = b_i)."""
    torch.manual_seed(6)
    weight = torch.randn(1, 8, dtype=torch.float64)
    model = nn.Sequential(activation, nn.Linear(8, 1, bias=False)).double().eval()
    model[1].weight.data = weight
    background, images = torch.randn(1, 8, dtype=torch.float64) * 2, torch.randn(3, 8, dtype=torch.float64) * 2
    images[0, :3] = background[0, :3]  # x = b: the fallback
    values = DeepShapEngine(model, background).shap_values(images)[:, 0]
    with torch.no_grad():
        expected = weight * (activation(images) - activation(background))
    np.testing.assert_allclose(values, expected.numpy(), rtol=1e-6, atol=1e-12)


# -- structures the Sequential engine got wrong or refused -----------------------------------------------


class Twice(nn.Sequential):
    """The same module object used twice in one Sequential."""

    def __init__(self):
        block = nn.Sequential(nn.Linear(6, 6), nn.ReLU())
        super().__init__(nn.Linear(5, 6), nn.ReLU(), block, block, nn.Linear(6, 3))


class Residual(nn.Sequential):
    """A Sequential subclass with its own forward (a skip connection) and a concatenation."""

    def __init__(self):
        super().__init__(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 36, 3))

    def forward(self, x):
        h = self[1](self[0](x))
        h = torch.cat([h, self[3](self[2](h)) + h], dim=1)
        return self[5](self[4](h))


class ShiftedReLU(nn.ReLU):
    def forward(self, x):
        return super().forward(x) + 1.0


def test_a_module_used_twice_is_explained_as_the_graph_computes_it():
    """shap hooks modules and keeps only the last call's activations: it is wrong here. The engine must
    equal shap on the same network with the reused block copied (where shap is right)."""
    torch.manual_seed(7)
    model = Twice().eval()
    unshared = nn.Sequential(*[copy.deepcopy(m) for m in model]).eval()
    assert_exact(model, torch.randn(10, 5), torch.randn(3, 5), reference_model=unshared)


def test_sequential_subclass_with_its_own_forward_residual_and_concatenation():
    torch.manual_seed(8)
    assert_exact(Residual().eval(), torch.rand(6, 2, 6, 6), torch.rand(2, 2, 6, 6))


def test_subclass_of_a_supported_module_with_more_in_forward():
    """The +1 shifts output and expected value alike: values equal those of a plain ReLU model."""
    torch.manual_seed(9)
    shifted = nn.Sequential(nn.Linear(4, 5), ShiftedReLU(), nn.Linear(5, 2)).eval()
    plain = nn.Sequential(shifted[0], nn.ReLU(), shifted[2]).eval()
    assert_exact(shifted, torch.randn(8, 4), torch.randn(3, 4), reference_model=plain)


def test_avgpool_divisor_override_padding_ceil_mode_and_uneven_adaptive_pool():
    torch.manual_seed(10)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.AvgPool2d(3, 2, padding=1, ceil_mode=True,
                                                                        divisor_override=5),
                          nn.ReLU(), nn.AdaptiveAvgPool2d((3, 2)), nn.Flatten(), nn.Linear(18, 3)).eval()
    assert_exact(model, torch.rand(7, 1, 11, 9), torch.rand(2, 1, 11, 9))


def test_linear_on_3d_activations_and_flatten_into_a_convolution():
    torch.manual_seed(11)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(start_dim=2),  # (3, 25)
                          nn.Conv1d(3, 4, 4, padding="same"), nn.ReLU(),  # string padding, even kernel
                          nn.Linear(25, 6), nn.Tanh(), nn.Flatten(), nn.Linear(24, 3)).eval()
    assert_exact(model, torch.rand(6, 2, 5, 5), torch.rand(2, 2, 5, 5))


def test_conv3d_with_string_padding_and_in_place_relu():
    torch.manual_seed(12)
    model = nn.Sequential(nn.Conv3d(1, 2, 2, padding="same"), nn.ReLU(inplace=True), nn.Flatten(),
                          nn.Linear(2 * 27, 3)).eval()
    reference = nn.Sequential(model[0], nn.ReLU(), model[2], model[3]).eval()
    assert_exact(model, torch.rand(5, 1, 3, 3, 3), torch.rand(2, 1, 3, 3, 3), reference_model=reference)


class FunctionalNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(1, 4, 3), nn.Linear(4 * 16, 3)

    def forward(self, x):
        return self.head(F.relu(self.conv(x)).flatten(1))


def test_functional_relu_is_additive_where_shaps_is_not():
    """shap sees no ReLU module and treats F.relu as linear; the engine applies the rescale rule."""
    torch.manual_seed(13)
    model = FunctionalNet().eval()
    background, images = torch.rand(8, 1, 6, 6) - 0.5, torch.rand(3, 1, 6, 6) - 0.5
    ours = DeepShapEngine(model, background).shap_values(images)
    shaps = float64_reference(model, background, images)
    ours_error = additivity_error(model, ours, background, images)
    shaps_error = additivity_error(model, shaps, background, images)
    assert ours_error <= 1e-6
    assert shaps_error > 100 * ours_error and shaps_error > 1e-3, (ours_error, shaps_error)


def test_overlapping_max_pool_adds_every_windows_share():
    """shap's max-unpool keeps one share where windows overlap; the engine adds them: additive."""
    torch.manual_seed(14)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(3, stride=1, padding=1), nn.Flatten(),
                          nn.Linear(2 * 36, 2)).eval()
    background, images = torch.rand(6, 1, 8, 8), torch.rand(2, 1, 8, 8)
    ours = DeepShapEngine(model, background).shap_values(images)
    assert additivity_error(model, ours, background, images) <= 1e-6


def test_max_pool_carries_the_image_half_of_the_gradient():
    """A ReLU after the pool sees x and b 1e-7 apart on either side of 0: its fallback slope is 1 at the
    image and 0 at the background. shap's rule sends the image's share through the image half; the
    Sequential engine (background half only) gave 0 here."""
    model = nn.Sequential(nn.MaxPool1d(2), nn.Flatten(), nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1)).double().eval()
    model[2].weight.data.fill_(1.0), model[2].bias.data.fill_(-1.0)
    model[4].weight.data.fill_(1.0), model[4].bias.data.zero_()
    background = torch.tensor([[[0.3, 1.0 - 4e-7]]], dtype=torch.float64)
    images = torch.tensor([[[1.0 + 5e-7, 0.2]]], dtype=torch.float64)
    ours = DeepShapEngine(model, background).shap_values(images).astype(np.float64)
    ref = reference_values(model, background, images)
    assert np.abs(ref).max() > 1e-7
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-14)


def resnet18_with_one_relu_per_use(stem_pool: bool = True) -> tuple[nn.Module, nn.Module]:
    """torchvision's resnet18 (random weights, 10 classes) and a copy on which shap's rules are right: each
    block calls its ReLU module twice, so the copy gets a second ReLU module for the second call.
    (Its stem's max-pool has overlapping windows, where shap is wrong: `stem_pool=False` drops it.)"""
    torch.manual_seed(15)
    model = torchvision.models.resnet18(num_classes=10)
    if not stem_pool:
        model.maxpool = nn.Identity()
    settle_batchnorm(model, (3, 32, 32))
    reference = one_relu_per_use(copy.deepcopy(model))
    return probabilities(model).eval(), probabilities(reference).eval()


def test_resnet18_matches_shap_where_shap_is_right():
    model, reference = resnet18_with_one_relu_per_use(stem_pool=False)
    background, images = torch.rand(4, 3, 32, 32), torch.rand(2, 3, 32, 32)
    ours, _ = assert_exact(model, background, images, reference_model=reference)
    assert ours.shape == (2, 10, 3, 32, 32)


def test_resnet18_float32_is_within_1e5_of_its_float64_values_and_additive():
    """The whole resnet18, its overlapping stem max-pool included: the float32 engine against the same
    rules run in float64 throughout (shap's own values are not additive here, see above)."""
    model, _ = resnet18_with_one_relu_per_use()
    background, images = torch.rand(4, 3, 32, 32), torch.rand(2, 3, 32, 32)
    ours = DeepShapEngine(model, background).shap_values(images)
    exact = DeepShapEngine(copy.deepcopy(model).double(), background.double()).shap_values(images.double())
    assert np.abs(ours - exact).max() <= 1e-5 * np.abs(exact).max()
    assert additivity_error(model, ours, background, images) <= 1e-6


class ShapeOps(nn.Module):
    """Transposed convolution, padding, upsampling, permute, slice, transpose, select, scaling and a matmul
    with a constant weight: every one linear, so shap (autograd through them) is right."""

    def __init__(self):
        super().__init__()
        self.conv, self.relu, self.up = nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(2, 3, 2, stride=2)
        self.tanh = nn.Tanh()
        self.weight = nn.Parameter(torch.randn(2 * 10 * 3, 4))

    def forward(self, x):  # (1, 6, 6)
        h = self.up(self.relu(self.conv(x)))  # (3, 12, 12)
        h = F.interpolate(F.pad(h, (1, 1, 1, 1)), scale_factor=0.5, mode="nearest")  # (3, 7, 7)
        h = h.permute(0, 2, 3, 1)[:, 1:, :, :].transpose(1, 2)  # (7, 6, 3)
        h = self.tanh(h.select(1, 2)[:, :, :] * 0.5 - 0.1)  # (6, 3)
        h = torch.cat([h, h[:, :4]], dim=1)  # (10, 3)
        return torch.cat([h, -h], dim=1).flatten(1) @ self.weight


def test_shape_operations_transposed_convolution_upsampling_and_matmul():
    torch.manual_seed(18)
    assert_exact(ShapeOps().eval(), torch.rand(6, 1, 6, 6), torch.rand(2, 1, 6, 6))


def test_log_softmax_is_additive():
    """shap has no rule for LogSoftmax modules (it treats them as linear); the engine's is shap's softmax rule."""
    torch.manual_seed(19)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3), nn.LogSoftmax(dim=1)).eval()
    background, images = torch.randn(9, 5), torch.randn(3, 5)
    values = DeepShapEngine(model, background).shap_values(images)
    assert additivity_error(model, values, background, images) <= 1e-6


def test_chunking_does_not_change_values():
    torch.manual_seed(4)
    cnn = build_reference_cnn(CNNConfig(in_channels=1, num_classes=3, widths=(4, 4, 4, 4, 4, 4, 4)))
    model = probabilities(settle_batchnorm(cnn, (1, 32, 32)))
    background, images = torch.rand(10, 1, 32, 32), torch.rand(5, 1, 32, 32)
    whole = DeepShapEngine(model, background, max_rows=10_000).shap_values(images)
    chunked = DeepShapEngine(model, background, max_rows=7).shap_values(images)  # 2 pairs per pass
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-6 * np.abs(whole).max())


def test_exported_program_with_a_fixed_batch_size_gives_the_modules_values():
    torch.manual_seed(16)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 9, 3), nn.Softmax(1)).eval()
    program = torch.export.export(model, (torch.rand(1, 1, 5, 5),))  # batch size 1, fixed
    background, images = torch.rand(5, 1, 5, 5), torch.rand(3, 1, 5, 5)
    np.testing.assert_allclose(DeepShapEngine(program, background).shap_values(images),
                               DeepShapEngine(model, background).shap_values(images), rtol=0, atol=1e-9)


class Square(nn.Module):
    def forward(self, x):
        return x * x


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = nn.MultiheadAttention(4, 1, batch_first=True)

    def forward(self, x):
        return self.attention(x, x, x, need_weights=False)[0].flatten(1)


class BatchMean(nn.Module):
    def forward(self, x):
        return x - x.mean(0, keepdim=True)


@pytest.mark.parametrize(
    ("model", "shape", "message"),
    [
        (nn.Sequential(nn.Linear(4, 4), Square()), (4,), r"aten\.mul at test_deep_shap\.py:\d+ \(module 1: Square\)"
                                                          r".*product of two activations"),
        (nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), (4,), r"aten\.layer_norm .*module 1: LayerNorm"),
        (Attention(), (3, 4), r"no exact rule for aten\.\w+"),
        (nn.Sequential(nn.Linear(4, 2), BatchMean()), (4,), r"mixes the samples of a batch"),
        (nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.LSTM(2, 2)), (1, 2, 2), r"must take one tensor and return "
                                                                                 r"one, it takes 1 and returns 3"),
    ],
    ids=["product", "layer-norm", "attention", "batch-statistic", "lstm"],
)
def test_operations_without_an_exact_rule_are_refused_by_name(model, shape, message):
    with pytest.raises(UnsupportedModelError, match=message):
        DeepShapEngine(model.eval(), torch.rand(3, *shape))


def test_exact_float32_puts_the_settings_back():
    torch.backends.cudnn.allow_tf32 = True  # torch's defaults, whatever an earlier test left
    torch.backends.cuda.matmul.allow_tf32 = False
    with exact_float32():
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        DeepShapEngine(nn.Sequential(nn.Linear(3, 2)), torch.rand(2, 3))  # tracing works inside
    assert torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32


def test_rows_for_memory_grow_with_the_budget_and_stay_whole_classes():
    shapes = {"x": (3, 32, 32), "relu": (64, 32, 32), "out": (10,)}
    small, large = (rows_for_memory(budget, shapes, ["relu"], 10) for budget in (2**28, 2**32))
    assert small % 10 == 0 and large % 10 == 0 and 10 <= small < large
    assert rows_for_memory(1, shapes, ["relu"], 10) == 10  # never below one pair


def test_a_model_of_the_same_structure_reuses_the_trace_with_its_own_weights():
    torch.manual_seed(17)
    first = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    second = copy.deepcopy(first)
    second[2].reset_parameters()
    background, images = torch.randn(6, 5), torch.randn(2, 5)
    DeepShapEngine(first, background).shap_values(images)
    assert_exact(second, background, images)
