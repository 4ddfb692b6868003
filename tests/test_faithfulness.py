"""Faithfulness checks: randomisation sanity check, deletion/insertion, stability."""

import numpy as np
import pytest

from tasks.deepshap.stage import background_images, explain_model
from tasks.techniques.faithfulness import (cascading_randomisation, curve_areas, deep_shap_explainer, deletion_insertion,
                                randomisation_verdict)
from tasks.steps.load import load_data, read_split
from tasks.model.reference import load_weights
from tasks.steps.train import predict_proba, train_model


def trained_run(tmp_path, dataset: str, epochs: int):
    loaded = load_data(dataset, tmp_path, seed=0, val_fraction=0.2)
    trained = train_model(loaded["train"]["path"], loaded["validation"]["path"], loaded["run_dir"], epochs, 64, 0)
    explained = explain_model(trained["weights"]["path"], loaded["train"]["path"], loaded["validation"]["path"],
                              loaded["run_dir"], background=40, explain=8, seed=0)
    model, _, _ = load_weights(trained["weights"]["path"])
    train, val = read_split(loaded["train"]["path"]), read_split(loaded["validation"]["path"])
    background = background_images(explained["background"]["path"])
    rows = val.inputs[:8]
    targets = predict_proba(model, rows).argmax(1)
    return model, background, rows, targets


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    return trained_run(tmp_path_factory.mktemp("bc"), "breast-cancer", 3)


def test_maps_that_ignore_the_model_are_flagged(table_run):
    model, _, rows, targets = table_run
    table = cascading_randomisation(model, lambda m, x, t: x.copy(), rows, targets, seed=0)  # "explains" the input
    signed, _, flagged = randomisation_verdict(table)
    assert signed == pytest.approx(1.0) and flagged
    assert sorted(table["layer"].unique()) == ["1", "3"]  # the trainable layers; the frozen standardiser is kept


def test_deep_shap_maps_change_when_the_model_is_randomised(table_run):
    model, background, rows, targets = table_run
    table = cascading_randomisation(model, deep_shap_explainer(background), rows, targets, seed=0)
    signed, _, flagged = randomisation_verdict(table)
    assert not flagged and signed < 0.5


def test_deep_shap_beats_random_order_in_deletion_and_insertion(tmp_path):
    model, background, rows, targets = trained_run(tmp_path, "digits", 1)
    maps = deep_shap_explainer(background)(model, rows, targets)
    curves = deletion_insertion(lambda x: predict_proba(model, x), rows, maps, targets, background.mean(0), seed=0)
    assert set(curves["fraction"]) == {i / 16 for i in range(17)}
    full = curves[(curves["curve"] == "deletion") & (curves["fraction"] == 0)]
    np.testing.assert_allclose(full["probability"], np.repeat(predict_proba(model, rows)[np.arange(8), targets], 4))
    areas = curve_areas(curves)
    assert areas.loc["deletion", "attribution"] < areas.loc["deletion", "random"]
    assert areas.loc["insertion", "attribution"] > areas.loc["insertion", "random"]


def test_the_same_background_gives_the_same_explanation(table_run):
    model, background, rows, targets = table_run
    first = deep_shap_explainer(background)(model, rows, targets)
    again = deep_shap_explainer(background.copy())(model, rows, targets)
    np.testing.assert_array_equal(first, again)
