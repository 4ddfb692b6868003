"""The verdict and the checks behind it: known answers on models and data made here.

The rule (tasks/run/verdict.py) on hand-made checks; the performance floors, the sample-size-aware slices and the
undefined correlations on arrays whose answers are worked out by hand; and whole runs of supplied models that must
read "Not fit for use" (a constant-output model, in-sample data) or must not (a well-trained table model).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from pypdf import PdfReader
from torch import nn

from tasks.run import layout
from tasks.run.checks import MATERIAL, MINOR, MODERATE, NOT_ASSESSABLE, SEVERITIES, Check, failed, graded
from tasks.run.errors import InputError
from tasks.run.verdict import CONDITIONS, FIT, NOT_FIT, TECHNICAL, derive
from tasks.steps.model_card import read_model_card
from tasks.techniques.agreement import agreement_table, flagged_rows, rank_agreement
from tasks.techniques.floors import no_information, per_class, untrained_layers
from tasks.techniques.population import upper_bound
from tasks.techniques.slices import slice_table
from tests.conftest import run_report


def check(check_id: str, value: float, not_assessable: str = "") -> Check:
    """A check that fails when value > 0."""
    return Check(check_id, "m", "p", value, 0, "at most", "s", "finding", not_assessable=not_assessable)


# -- The rule ----------------------------------------------------------------------------------------

def test_any_failed_material_finding_is_not_fit_and_moderate_ones_give_conditions():
    material, moderate, minor = "performance.no_information", "calibration.ece", "deepshap.stability"
    assert (SEVERITIES[material], SEVERITIES[moderate], SEVERITIES[minor]) == (MATERIAL, MODERATE, MINOR)
    assert derive([check(material, 1), check(moderate, 1)], True).text == NOT_FIT
    assert derive([check(material, 0), check(moderate, 1)], True).text == CONDITIONS
    minor_only = derive([check(material, 0), check(minor, 1)], True)
    assert minor_only.text == FIT and minor_only.counts["minor"] == 1
    assert derive([check(material, 0, not_assessable="too few rows")], True).text == CONDITIONS


def test_without_an_intended_use_the_verdict_is_a_technical_assessment_still_graded():
    verdict = derive([check("performance.no_information", 1)], intended_use_declared=False)
    assert verdict.text == TECHNICAL and verdict.graded == NOT_FIT
    assert verdict.reasons == ("performance.no_information",)


def test_a_check_that_cannot_judge_is_never_shown_as_passed():
    unknown = check("slices.weak", 0, not_assessable="no slice has 3 rows")
    assert unknown.status == NOT_ASSESSABLE and not unknown.passed and failed([unknown]) == []
    assert unknown.to_json()["status"] == NOT_ASSESSABLE and unknown.to_json()["passed"] is False


def test_the_model_card_sets_severities():
    (regraded,) = graded([check("calibration.ece", 1)], {"calibration.ece": MATERIAL})
    assert regraded.grade == MATERIAL and derive([regraded], True).text == NOT_FIT


# -- The floors --------------------------------------------------------------------------------------

def test_a_constant_predictor_does_not_beat_the_no_information_rate_and_a_good_one_does():
    labels = np.repeat([0, 1, 2], 40)
    constant = no_information(labels, np.zeros_like(labels), 3)
    assert constant["rate"] == pytest.approx(1 / 3) and constant["p_value"] > 0.4
    good = labels.copy()
    good[:6] = 1  # 114 of 120 right
    assert no_information(labels, good, 3)["p_value"] < 1e-20


def test_the_recall_floor_judges_only_classes_with_enough_rows():
    labels = np.r_[np.zeros(20, int), np.ones(20, int), np.full(3, 2)]
    predicted = np.r_[np.zeros(20, int), np.zeros(20, int), np.zeros(3, int)]  # classes 1 and 2 never predicted
    table = per_class(labels, predicted, ["a", "b", "c"], floor=0.5).set_index("class_name")
    assert table.loc["b", "below_floor"] and table.loc["b", "recall_upper"] == pytest.approx(1 - 0.05 ** (1 / 20))
    assert not table.loc["c", "judgeable"] and not table.loc["c", "below_floor"]  # 3 rows: 0 of 3 is not enough
    assert not table.loc["a", "below_floor"]
    assert upper_bound(0, 20) == pytest.approx(1 - 0.05 ** (1 / 20))  # the closed form when no row is right


def test_normalisation_layers_at_their_initial_values_look_untrained():
    torch.manual_seed(0)
    network = torchvision.models.resnet18(num_classes=3)
    state = {k: v.numpy() for k, v in network.state_dict().items()}
    at_init, layers = untrained_layers(state)
    assert layers == 20 and at_init == 20
    network.train()(torch.randn(4, 3, 32, 32))  # one forward pass in training mode moves the running statistics
    assert untrained_layers({k: v.numpy() for k, v in network.state_dict().items()}) == (0, 20)


# -- Slices and agreement: sample size and undefined statistics -----------------------------------------

def test_one_error_in_twelve_rows_is_no_weak_slice_and_ten_in_forty_is():
    def flagged(errors_in_slice, slice_rows, total):
        correct = np.ones(total, bool)
        correct[:errors_in_slice] = False
        labels = pd.Series(np.where(np.arange(total) < slice_rows, "slice", "rest"))
        table = slice_table(correct, np.ones(total), {"s": labels}).set_index("slice")
        return bool(table.loc["slice", "flagged"])

    assert not flagged(1, 12, 100)  # overall 99%, the slice 91.7%: one error is not evidence
    assert flagged(10, 40, 1000)  # overall 99%, the slice 75%, its upper bound 85.6%


def test_an_undefined_correlation_is_not_counted_as_disagreement():
    rho, _ = rank_agreement(np.array([1.0, 2.0, 3.0]), np.zeros(3))
    assert np.isnan(rho)
    table = agreement_table({"A": {0: np.array([1.0, 2.0, 3.0])}, "B": {0: np.zeros(3)}}, None, {0: "r"})
    assert not table["flagged"].any() and flagged_rows(table) == []


# -- The model card --------------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("owner: Alice\nrisk_tier: high\nowner: Mallory\n", "the key 'owner' is given twice"),
    ("thresholds:\n  calibration.ece: -1\n", "must be between 0 and 1"),
    ("thresholds:\n  fairness.selection_rate_ratio: 7\n", "must be between 0 and 1"),
    ("severities:\n  calibration.ece: severe\n", "severities must be one of material, moderate, minor"),
    ("severities:\n  no.such: minor\n", "unknown check ids in severities"),
    ("evaluation_data: fresh\n", "evaluation_data must be one of"),
    ("owner: " + "[" * 20000 + "]" * 20000 + "\n", "nested more than 20 levels deep"),
])
def test_a_model_card_that_no_run_can_honour_is_refused_in_one_line(tmp_path, text, message):
    card = tmp_path / "card.yaml"
    card.write_text(text)
    with pytest.raises(InputError, match=message) as caught:
        read_model_card(card)
    assert "\n" not in str(caught.value)


def test_a_merge_key_bomb_is_refused_quickly(tmp_path):
    lines = ["a0: &a0 {k0: 1}"]
    for i in range(1, 30):  # each mapping merges the 8 before it: exponential work in a few kilobytes
        lines.append(f"a{i}: &a{i}\n  <<: [{', '.join(f'*a{j}' for j in range(max(0, i - 8), i))}]\n  k{i}: {i}")
    card = tmp_path / "bomb.yaml"
    card.write_text("\n".join(lines) + "\n")
    assert card.stat().st_size < 10_000
    started = time.perf_counter()
    with pytest.raises(InputError, match="expands to more than 20,000 YAML nodes"):
        read_model_card(card)
    assert time.perf_counter() - started < 5


# -- Whole runs of supplied models -----------------------------------------------------------------

class Constant(nn.Module):
    """The same probabilities whatever the input: a useless model."""

    def __init__(self, features: int):
        super().__init__()
        self.layer = nn.Linear(features, 2)

    def forward(self, x):
        return self.layer(x) * 0.0 + torch.tensor([2.0, -1.0])


def write_card(path: Path, **fields) -> Path:
    path.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in fields.items()))
    return path


def export(model: nn.Module, features: int, path: Path) -> Path:
    program = torch.export.export(model.eval(), (torch.rand(2, features),),
                                  dynamic_shapes=({0: torch.export.Dim.AUTO},))
    torch.export.save(program, str(path))
    return path


def pdf_text(path) -> str:
    return " ".join(" ".join(page.extract_text().split()) for page in PdfReader(path).pages)


@pytest.mark.slow
def test_a_constant_model_on_in_sample_data_reads_not_fit_for_use(prefect_server, tmp_path):
    torch.manual_seed(0)
    model = export(Constant(30), 30, tmp_path / "constant.pt2")
    card = write_card(tmp_path / "card.yaml", owner="Credit risk", intended_use="Screening of biopsies",
                      evaluation_data="in-sample")
    state, result = run_report(tmp_path / "runs", dataset="breast-cancer", model=str(model), model_card=str(card),
                               background=10, explain_rows=4)
    assert result["verdict"] == NOT_FIT and state.message.startswith(NOT_FIT)
    findings = pd.read_parquet(layout.path(result["run_dir"], "findings"))
    material = set(findings.loc[findings["severity"] == MATERIAL, "check"])
    assert {"performance.no_information", "performance.degenerate", "performance.flat_probabilities",
            "data.lineage"} <= material
    assert findings["evidence_sha256"].str.fullmatch("[0-9a-f]{64}").any()
    text = pdf_text(result["pdf"])
    page_one = " ".join(PdfReader(result["pdf"]).pages[0].extract_text().split())
    assert NOT_FIT in page_one and "Any failed material finding" in page_one and "in-sample" in page_one
    assert "Findings register" in text and "awaiting response" in text
    assert "trained on logits" not in text


@pytest.mark.slow
def test_a_well_trained_table_model_is_not_called_unfit(prefect_server, tmp_path):
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from skl2onnx import to_onnx

    x, y = load_breast_cancer(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
    model = tmp_path / "scorecard.onnx"
    model.write_bytes(to_onnx(pipe, x[:1].astype(np.float32), options={"zipmap": False}).SerializeToString())
    card = write_card(tmp_path / "card.yaml", owner="Pathology", intended_use="Second reader for biopsies",
                      evaluation_data="independent", post_market_monitoring="Monthly PSI and recall review")
    state, result = run_report(tmp_path / "runs", dataset="breast-cancer", model=str(model), model_card=str(card),
                               background=10, explain_rows=4)
    assert result["verdict"] in (FIT, CONDITIONS), state.message
    checks = {c["id"]: c for c in json.loads(layout.path(result["run_dir"], "manifest").read_text())["checks"]}
    for floor in ("performance.no_information", "performance.class_recall", "performance.degenerate",
                  "performance.flat_probabilities", "data.lineage"):
        assert checks[floor]["status"] == "passed", floor
    page_one = " ".join(PdfReader(result["pdf"]).pages[0].extract_text().split())
    assert result["verdict"] in page_one and "0 material" in page_one


class NaNOffTheData(nn.Module):
    """A working linear model that returns NaN for any row with a negative feature: no real breast-cancer row
    has one, but perturbed rows do."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(30, 2)

    def forward(self, x):
        scores = self.layer(x)
        return torch.where((x < 0).any(1, keepdim=True), torch.full_like(scores, float("nan")), scores)


@pytest.mark.slow
def test_nan_on_perturbed_inputs_is_a_counted_material_finding_never_a_score(prefect_server, tmp_path):
    torch.manual_seed(0)
    model = export(NaNOffTheData(), 30, tmp_path / "nan.pt2")
    card = write_card(tmp_path / "card.yaml", intended_use="Screening", materiality="medium",
                      evaluation_data="independent")
    state, result = run_report(tmp_path / "runs", dataset="breast-cancer", model=str(model), model_card=str(card),
                               background=10, explain_rows=4)
    robustness = result["results"]["robustness"]
    assert robustness["skipped"].startswith("Not completed: the model returned NaN or infinite outputs on ")
    (finite,) = robustness["checks"]
    assert finite["id"] == "model.finite_outputs" and finite["value"] > 0 and finite["severity"] == MATERIAL
    assert result["verdict"] == NOT_FIT and not layout.path(result["run_dir"], "robustness").exists()
    text = pdf_text(result["pdf"])
    assert "Robustness to perturbations Not completed: the model returned NaN" in text


def test_the_model_card_chooses_which_fairness_measures_apply(tmp_path):
    from tasks.steps.model_card import store_model_card

    card = tmp_path / "card.yaml"
    card.write_text("fairness_measures: [equal_opportunity]\nfavourable_outcome: approved\n")
    assert store_model_card(card, tmp_path / "run")["fairness_measures"] == ["equal_opportunity"]
    card.write_text("fairness_measures: [parity]\n")
    with pytest.raises(InputError, match="fairness_measures must be a list of demographic_parity"):
        read_model_card(card)
