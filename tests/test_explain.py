import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tasks.deepshap.stage import select_background, select_images, shap_deep_explainer
from tasks.run import layout
from tasks.run.errors import InputError
from tasks.run.formats import read_split


def test_selection_covers_every_class_and_includes_mistakes():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=200)
    predicted = labels.copy()
    wrong = rng.choice(200, size=15, replace=False)
    predicted[wrong] = (labels[wrong] + 1) % 5
    chosen = select_images(labels, predicted, 10, seed=0)
    assert len(chosen) == len(set(chosen)) == 10
    assert set(labels[chosen]) == set(range(5))
    assert (labels[chosen] != predicted[chosen]).sum() == 5  # half the budget goes to mistakes
    np.testing.assert_array_equal(chosen, select_images(labels, predicted, 10, seed=0))


def test_selection_with_no_mistakes_and_too_many_asked():
    labels = np.arange(6) % 3
    assert sorted(select_images(labels, labels, 6, seed=1)) == list(range(6))
    with pytest.raises(InputError, match="--explain 7 is larger than the validation split"):
        select_images(labels, labels, 7, seed=1)
    with pytest.raises(InputError, match="--background 7 is larger than the training split"):
        select_background(6, 7, seed=0)


def test_default_sizes_adapt_to_small_splits_and_given_ones_must_fit():
    from tasks.steps.load import fit_sizes

    assert fit_sizes(None, None, 1000, 500) == {"background": 200, "explain_rows": 32,
                                                "why": {"background": "default 200", "explain_rows": "default 32"}}
    small = fit_sizes(None, None, 48, 12)
    assert (small["background"], small["explain_rows"]) == (48, 12)
    assert small["why"] == {"background": "default 200, cut to the training split's 48 rows",
                            "explain_rows": "default 32, cut to the validation split's 12 rows"}
    assert fit_sizes(48, 5, 48, 12)["why"] == {"background": "given", "explain_rows": "given"}
    with pytest.raises(InputError, match="--background 49 is larger than the training split \\(48 rows\\)"):
        fit_sizes(49, None, 48, 12)
    with pytest.raises(InputError, match="--explain 13 is larger than the validation split"):
        fit_sizes(None, 13, 48, 12)


def test_shap_values_of_a_linear_model_are_w_times_x_minus_mean():
    """Known answer: for f(x) = w.x + b, SHAP values are w * (x - mean(background))."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2)).eval()
    background, images = torch.randn(30, 3, 2, 2), torch.randn(4, 3, 2, 2)
    values = shap_deep_explainer(model, background)(images)  # (4, 2, 3, 2, 2)
    w = model[1].weight.detach().reshape(2, 3, 2, 2)
    expected = w[None] * (images - background.mean(0))[:, None]
    np.testing.assert_allclose(values, expected.numpy(), atol=1e-5)


def test_the_shap_stage_writes_additive_values_with_the_documented_schema(image_run):
    _, run = image_run
    run_dir, result = run["run_dir"], run["results"]["deepshap"]
    table = pq.read_table(layout.path(run_dir, "shap_values"))
    assert table.schema.field("values").type == pa.list_(pa.float32(), 3 * 32 * 32)
    assert table.num_rows == 5 * 3
    expected = json.loads(table.schema.metadata[b"accountability.expected_values"])
    assert expected == pytest.approx(result["expected_values"]) and sum(expected) == pytest.approx(1.0, abs=1e-5)

    explained = pq.read_table(layout.path(run_dir, "explained")).to_pandas()
    assert list(explained["position"]) == list(range(5))
    assert set(explained["label"]) == {0, 1, 2}
    assert result["max_additivity_error"] < 1e-5
    assert explained["additivity_error"].max() == pytest.approx(result["max_additivity_error"])

    # The additivity recorded in the file agrees with a recomputation from the values themselves.
    values = np.stack(table.column("values").to_numpy(zero_copy_only=False)).reshape(5, 3, -1)
    probs = np.stack(explained["probabilities"].to_numpy())
    residual = np.abs(values.sum(-1) - (probs - np.asarray(expected))).max()
    assert residual < 1e-5
    assert pq.read_table(layout.path(run_dir, "background")).num_rows == 6
    val = read_split(layout.path(run_dir, "validation"))
    assert set(explained["source_id"]) <= set(val.source_ids)
