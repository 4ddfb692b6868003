"""Faithfulness checks: randomisation sanity check, stability. (Deletion/insertion on the digits model is in
test_flow.py, whose worker makes the digits run: two files asking for it on two workers made it twice.)"""

import numpy as np
import pytest

from tasks.model.run_model import load_run_model
from tasks.run import layout
from tasks.run.formats import background_images, read_split
from tasks.techniques.faithfulness import (cascading_randomisation, deep_shap_explainer, margin_judgement,
                                          randomisation_judgement, randomisation_verdict)


def model_and_rows(run_dir):
    """A finished run's model, SHAP background, first 8 validation rows and their predicted classes."""
    model = load_run_model(layout.path(run_dir, "model"))
    background = background_images(layout.path(run_dir, "background"))
    rows = read_split(layout.path(run_dir, "validation")).inputs[:8]
    return model, background, rows, model.predict_proba(rows).argmax(1)


@pytest.fixture(scope="module")
def table_model(table_run):
    return model_and_rows(table_run["run_dir"])


def test_maps_that_ignore_the_model_are_flagged(table_model):
    model, _, rows, targets = table_model
    table = cascading_randomisation(model, lambda m, x, t: x.copy(), rows, targets, seed=0)  # "explains" the input
    signed, _, flagged = randomisation_verdict(table)
    assert signed == pytest.approx(1.0) and flagged
    assert sorted(table["layer"].unique()) == ["1", "3"]  # the trainable layers; the frozen standardiser is kept


def test_deep_shap_maps_change_when_the_model_is_randomised(table_model):
    model, background, rows, targets = table_model
    table = cascading_randomisation(model, deep_shap_explainer(background), rows, targets, seed=0)
    signed, _, flagged = randomisation_verdict(table)
    assert not flagged and signed < 0.5


def test_the_same_background_gives_the_same_explanation(table_model):
    model, background, rows, targets = table_model
    first = deep_shap_explainer(background)(model, rows, targets)
    again = deep_shap_explainer(background.copy())(model, rows, targets)
    np.testing.assert_array_equal(first, again)


@pytest.mark.parametrize("correlations, judged", [
    ([1.0] * 8, True),  # maps that ignore the model: interval [1, 1], above the threshold: it fails
    ([0.1, 0.2, 0.0, 0.15, 0.1, 0.05, 0.2, 0.1], True),  # maps that follow the model: below it
    ([0.0, 1.0, 0.1, 0.9], False),  # four rows on both sides: too few to tell
    ([float("nan")] * 4, False),  # constant maps: no correlation is defined
])
def test_randomisation_judges_only_when_its_interval_is_on_one_side(correlations, judged):
    import pandas as pd

    table = pd.DataFrame({"step": 2, "spearman": correlations})
    why, (low, high) = randomisation_judgement(table, seed=0)
    assert (why == "") == judged, why
    if judged:
        assert low <= np.mean(correlations) <= high


def test_deletion_and_insertion_margins_pass_only_when_their_interval_excludes_zero():
    assert margin_judgement(0.01, 0.2) == "" and margin_judgement(-0.3, -0.1) == ""
    assert "includes zero" in margin_judgement(-0.05, 0.2)
