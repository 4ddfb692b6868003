"""Known-answer and invariant tests for the explanation techniques, on tiny models made here."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.inspection import permutation_importance as sklearn_permutation_importance
from torch import nn

from tasks.techniques.agreement import THRESHOLD, agreement_table, flagged_rows, rank_agreement
from tasks.deepshap.engine import DeepShapEngine
from tasks.techniques.groups import feature_columns, image_channels, image_regions
from tasks.techniques.gradients import integrated_gradients
from tasks.techniques.kernel_shap import kernel_shap_patches, kernel_shap_tabular
from tasks.techniques.lime_surrogates import lime_images, lime_tabular
from tasks.run.formats import Split
from tasks.techniques.partial_dependence import FittedClassifier, pd_curves
from tasks.techniques.permutation import REPEATS, choose_repeats, grouped_permutation_importance
from tasks.techniques.slices import slice_table
from tasks.model.predict import predict_proba


def linear_model(weights: list[list[float]]) -> nn.Sequential:
    layer = nn.Linear(len(weights[0]), len(weights))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weights))
        layer.bias.fill_(0.1)
    return nn.Sequential(layer).eval()


@pytest.fixture
def table_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64)


def test_deep_shap_ig_and_kernel_shap_of_a_linear_model_equal_w_times_x_minus_mean(table_data):
    x, _ = table_data
    w = [[2.0, -1.0, 0.0, 0.5], [-2.0, 1.0, 0.0, -0.5]]
    model = linear_model(w)
    background, rows = torch.from_numpy(x[:50]), torch.from_numpy(x[50:53])
    expected = np.array(w)[None] * (rows.numpy() - background.numpy().mean(0))[:, None]  # (n, K, F)

    deep = DeepShapEngine(model, background).shap_values(rows)
    np.testing.assert_allclose(deep, expected, atol=1e-5)
    ig, errors = integrated_gradients(model, rows, background.mean(0, keepdim=True), torch.tensor([0, 0, 0]))
    np.testing.assert_allclose(ig, expected[:, 0], atol=1e-5)
    assert errors.max() < 1e-5

    def logits(batch):
        with torch.no_grad():
            return model(torch.as_tensor(batch, dtype=torch.float32)).double().numpy()

    kernel, base = kernel_shap_tabular(logits, rows.numpy(), background.numpy(), seed=0)
    np.testing.assert_allclose(kernel, expected, atol=1e-4)
    np.testing.assert_allclose(base, logits(background.numpy()).mean(0), atol=1e-5)


def test_kernel_shap_on_image_patches_adds_up_and_finds_the_only_patch_that_matters():
    image = np.zeros((1, 8, 8), dtype=np.float32)
    image[0, :4, :4] = 1.0  # the top-left patch of a 2x2 grid is lit

    def predict(batch):  # class 1's score is the mean of the top-left 4x4 pixels
        score = batch[:, 0, :4, :4].reshape(len(batch), -1).mean(1)
        return np.stack([1 - score, score], 1).astype(np.float64)

    groups = image_regions((1, 8, 8), 2)
    values, expected = kernel_shap_patches(predict, image[None], np.zeros_like(image), groups, seed=0)
    assert values.shape == (1, 2, 4)
    np.testing.assert_allclose(values[0, 1], [1.0, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(values.sum(-1)[0] + expected, predict(image[None])[0], atol=1e-6)


def test_permutation_importance_ranks_the_informative_feature_first_and_matches_sklearn(table_data):
    x, y = table_data
    model = linear_model([[-3.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]])  # uses feature 0 only

    def predict(batch):
        return predict_proba(model, batch)

    groups = feature_columns(["signal", "noise a", "noise b", "noise c"])
    ours = grouped_permutation_importance(predict, x, y, groups, n_repeats=20, seed=0)
    assert ours["importance_mean"].idxmax() == 0 and ours.loc[0, "ci_low"] > 0.3
    np.testing.assert_array_equal(ours.loc[1:, "importance_mean"], 0.0)  # shuffling an unused column changes nothing
    reference = sklearn_permutation_importance(FittedClassifier(predict, 2), x, y, scoring="accuracy", n_repeats=20,
                                               random_state=0)
    assert abs(reference.importances_mean[0] - ours.loc[0, "importance_mean"]) < 0.05
    np.testing.assert_array_equal(reference.importances_mean[1:], 0.0)


def test_region_and_channel_groups_partition_the_image():
    regions, channels = image_regions((3, 32, 32), 4), image_channels((3, 32, 32))
    for groups in (regions, channels):
        np.testing.assert_array_equal(groups.masks.sum(0), 1)  # every position in exactly one group
    values = np.random.default_rng(0).normal(size=(5, 2, 3, 32, 32))
    np.testing.assert_allclose(regions.aggregate(values).sum(-1), values.reshape(5, 2, -1).sum(-1))
    per_region = regions.aggregate(values)
    np.testing.assert_allclose(regions.aggregate(regions.spread(per_region)), per_region)  # spread keeps each sum
    assert channels.names == ["red", "green", "blue"] and len(regions.names) == 16


class LinearProbability(nn.Module):
    """Two classes; P(class 1) = 0.5 + 0.1 * x0 (for |x0| < 5), returned as log-probabilities (logits)."""

    def forward(self, x):
        p1 = (0.5 + 0.1 * x[:, 0]).clamp(1e-6, 1 - 1e-6)
        return torch.log(torch.stack([1 - p1, p1], 1))


def test_the_partial_dependence_of_a_linear_model_is_a_straight_line(table_data):
    x, _ = table_data
    curves = pd_curves(lambda b: predict_proba(LinearProbability(), b), 2, x, feature=0)
    average = curves[curves["row"] < 0].sort_values("grid_value")
    slope = np.diff(average["probability"]) / np.diff(average["grid_value"])
    np.testing.assert_allclose(slope, 0.1, atol=1e-6)
    ice = curves[curves["row"] == 0]
    assert len(ice) == len(average) and (curves["class_index"] == 1).all()
    flat = pd_curves(lambda b: predict_proba(LinearProbability(), b), 2, x, feature=2)  # a feature the model ignores: a flat line
    assert np.ptp(flat[flat["row"] < 0]["probability"]) < 1e-9


def test_lime_names_the_one_feature_a_model_depends_on(table_data):
    x, y = table_data
    model = linear_model([[0.0, 0.0, -4.0, 0.0], [0.0, 0.0, 4.0, 0.0]])  # depends on feature 2 only
    names = ["a", "b", "c", "d"]
    train = Split(inputs=x, labels=y, source_ids=[str(i) for i in range(len(y))], class_names=["no", "yes"],
                  modality="table", feature_names=names)
    results = lime_tabular(lambda b: predict_proba(model, b), train, x[:3], np.array([1, 1, 1]), seed=0)
    for result in results:
        assert int(np.argmax(np.abs(result["values"]))) == 2
        assert result["reasons"][0][0].startswith("c") or " c " in result["reasons"][0][0]


def test_lime_image_maps_have_the_image_shape_and_favour_the_lit_half():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 0.1, size=(1, 16, 16)).astype(np.float32)
    image[0, :, :8] += 0.8  # the left half is lit

    def predict(batch):  # class 1: brightness of the left half
        score = batch[:, 0, :, :8].reshape(len(batch), -1).mean(1).clip(0, 1)
        return np.stack([1 - score, score], 1).astype(np.float64)

    result = lime_images(predict, image[None], np.array([1]), seed=0)[0]
    assert result["values"].shape == image.shape
    assert result["values"][0, :, :8].sum() > 10 * abs(result["values"][0, :, 8:].sum())


def test_rank_agreement_and_the_disagreement_flag():
    a = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.5])
    assert rank_agreement(a, a) == (1.0, 1.0)
    assert rank_agreement(a, -a)[0] == 1.0  # magnitudes are compared, not signs
    rho, _ = rank_agreement(a, a[::-1])
    assert rho == pytest.approx(-1.0)
    table = agreement_table({"A": {0: a, 1: a}, "B": {0: a, 1: a[::-1]}}, None, {0: "x", 1: "y"})
    assert table.set_index("position")["flagged"].to_dict() == {0: False, 1: True}
    assert (table["spearman"] < THRESHOLD).sum() == 1
    assert flagged_rows(table) == [1]
    five = agreement_table({m: {0: a} for m in "ABCD"} | {"E": {0: a[::-1]}}, None, {0: "x"})
    assert five["flagged"].sum() == 4 and flagged_rows(five) == []  # one outlier of five methods: pairs flagged, row not


def test_a_slice_where_the_model_fails_is_flagged():
    correct = np.array([True] * 40 + [False] * 10 + [True] * 10)
    slices = pd.Series(["a"] * 40 + ["b"] * 20)
    table = slice_table(correct, np.full(60, 0.9), {"group": slices}).set_index("slice")
    assert table.loc["b", "accuracy"] == pytest.approx(0.5) and table.loc["b", "flagged"]
    assert not table.loc["a", "flagged"] and table["n_rows"].sum() == 60


def test_slice_labels_show_interval_bounds_without_float_noise():
    import pandas as pd

    from tasks.techniques.slices import interval_labels

    column = pd.Series(np.array([185.193, 200.5, 510.25, 700.125], dtype=np.float32))
    labels = interval_labels(pd.qcut(column, 2))
    assert list(labels) == ["(185.2, 355.4]", "(185.2, 355.4]", "(355.4, 700.1]", "(355.4, 700.1]"]
    assert interval_labels(pd.Series(["class a"])).tolist() == ["class a"]  # not an interval: as it is


def test_permutation_repeats_rise_on_small_data_and_never_fall_below_the_default():
    assert choose_repeats("table", 5000) == (10, None) and choose_repeats("table", 200) == (10, None)
    assert choose_repeats("table", 100)[0] == 20 and choose_repeats("table", 12)[0] == 50  # 2,000 / 100; capped
    assert "raised for 100 validation rows" in choose_repeats("table", 100)[1]
    assert choose_repeats("image", 8) == (5, None)  # a shuffle of images is a forward pass: not raised
    for modality in REPEATS:
        counts = [choose_repeats(modality, n)[0] for n in range(1, 6000, 7)]
        assert min(counts) == REPEATS[modality] and counts == sorted(counts, reverse=True)
