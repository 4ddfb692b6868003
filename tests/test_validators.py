"""What validators check beyond explanations: fairness, calibration, robustness, the challenger, traceability.

Known answers on data made in the test; the whole report path on a breast-cancer table with a
synthetic protected column (tests/test_validators.py::validated_run).
"""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.run.checks import Check
from tasks.run.errors import InputError
from tasks.steps.model_card import THRESHOLDS, read_model_card, store_model_card
from tasks.techniques.calibration import assess_calibration, expected_calibration_error
from tasks.techniques.challenger import fit_challenger, paired_bootstrap
from tasks.techniques.fairness import group_fairness
from tasks.techniques.robustness import breaking_strength, robustness_curves, table_perturbations

ROOT = Path(__file__).resolve().parent.parent


def test_fairness_measures_equal_those_worked_out_by_hand():
    # Group a: 100 rows, 60 predicted positive; of its 50 positives 40 are found, of its 50 negatives 20 flagged.
    # Group b: 100 rows, 30 predicted positive; of its 50 positives 25 are found, of its 50 negatives 5 flagged.
    def group(tp, fp, positives=50, negatives=50):
        labels = np.r_[np.ones(positives), np.zeros(negatives)].astype(int)
        predicted = np.r_[np.ones(tp), np.zeros(positives - tp), np.ones(fp), np.zeros(negatives - fp)].astype(int)
        return labels, predicted
    (la, pa_), (lb, pb) = group(40, 20), group(25, 5)
    labels, predicted = np.r_[la, lb], np.r_[pa_, pb]
    groups = ["a"] * 100 + ["b"] * 100
    per_group, summary = group_fairness(labels, predicted, groups, [1], ["no", "yes"], seed=0, n_boot=50)
    rows = per_group.set_index("group")
    assert rows.loc["a", "selection_rate"] == pytest.approx(0.6)
    assert rows.loc["b", "selection_rate"] == pytest.approx(0.3)
    assert rows.loc["a", "tpr"] == pytest.approx(0.8) and rows.loc["b", "tpr"] == pytest.approx(0.5)
    assert rows.loc["a", "fpr"] == pytest.approx(0.4) and rows.loc["b", "fpr"] == pytest.approx(0.1)
    assert rows.loc["a", "accuracy"] == pytest.approx((40 + 30) / 100)
    (s,) = summary.to_dict("records")
    assert s["dp_difference"] == pytest.approx(0.3) and s["dp_ratio"] == pytest.approx(0.5)
    assert s["eo_difference"] == pytest.approx(max(0.8 - 0.5, 0.4 - 0.1))
    assert s["dp_difference_low"] <= 0.3 <= s["dp_difference_high"]
    assert s["dp_ratio_low"] <= 0.5 <= s["dp_ratio_high"]


def test_an_unbiased_model_has_parity():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 4000)
    predicted = np.where(rng.random(4000) < 0.9, labels, 1 - labels)  # 90% right, whatever the group
    groups = list(rng.choice(["a", "b"], 4000))
    _, summary = group_fairness(labels, predicted, groups, [1], ["no", "yes"], seed=0, n_boot=20)
    assert summary["dp_ratio"].iloc[0] > 0.8 and summary["eo_difference"].iloc[0] < 0.05


def test_the_calibration_error_of_a_known_case():
    confidence = np.full(10, 0.9)
    outcome = np.r_[np.ones(7), np.zeros(3)]
    assert expected_calibration_error(confidence, outcome) == pytest.approx(0.2)
    # two bins: 0.25 (half right: gap 0.25) and 0.95 (all right: gap 0.05), equal weight
    confidence = np.r_[np.full(4, 0.25), np.full(4, 0.95)]
    outcome = np.r_[1, 1, 0, 0, 1, 1, 1, 1]
    assert expected_calibration_error(confidence, outcome) == pytest.approx((0.25 + 0.05) / 2)


def test_a_calibrated_classifier_passes_and_an_overconfident_one_fails():
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    labels = (rng.random(20000) < p).astype(int)  # outcomes drawn with the stated probability
    calibrated = assess_calibration(np.c_[1 - p, p], labels, positive=1, seed=0)
    logit = np.log(p / (1 - p))
    sharp = 1 / (1 + np.exp(-4 * logit))  # the same ranking, four times as sure
    overconfident = assess_calibration(np.c_[1 - sharp, sharp], labels, positive=1, seed=0)
    bound = THRESHOLDS["calibration.ece"][0]
    assert calibrated["ece"] < 0.02 and calibrated["ece_low"] <= calibrated["ece"] <= calibrated["ece_high"]
    assert overconfident["ece"] > 0.1 and overconfident["brier"] > calibrated["brier"]
    assert overconfident["log_loss"] > calibrated["log_loss"]
    for scores, passes in ((calibrated, True), (overconfident, False)):
        check = Check("calibration.ece", "Calibration", "ece", scores["ece"], bound, "at most", "3", "finding")
        assert check.passed is passes
    # multi-class: top label
    probs = np.array([[0.8, 0.1, 0.1]] * 5 + [[0.1, 0.8, 0.1]] * 5)
    top = assess_calibration(probs, np.r_[[0] * 4, 1, [1] * 4, 2], positive=None, seed=0)
    assert top["kind"] == "top label" and top["ece"] == pytest.approx(0.0)


def test_a_model_that_averages_redundant_features_is_robust_to_noise_and_one_on_a_single_feature_is_not():
    rng = np.random.default_rng(0)
    n = 2000
    sign = rng.choice([-1.0, 1.0], n)
    labels = (sign > 0).astype(int)
    redundant = (sign[:, None] + rng.normal(0, 0.3, (n, 10))).astype(np.float32)  # ten noisy copies of the class
    single = rng.normal(0, 1, (n, 1)).astype(np.float32)
    single_labels = (single[:, 0] > 0).astype(int)  # the class is the sign of one feature: many rows near 0

    def averaging(x):
        score = x.mean(1)
        return np.c_[-score, score]

    def thresholding(x):
        return np.c_[-x[:, 0], x[:, 0]]

    robust = robustness_curves(averaging, redundant, labels, table_perturbations(redundant.std(0)), seed=0)
    brittle = robustness_curves(thresholding, single, single_labels, table_perturbations(single.std(0)), seed=0)
    assert robust["accuracy"].iloc[0] == brittle["accuracy"].iloc[0] == 1.0  # both perfect unperturbed
    assert breaking_strength(robust, 0.05) is None  # never loses 5 points up to noise of one standard deviation
    brittle_break = breaking_strength(brittle, 0.05)
    assert brittle_break is not None and brittle_break < 0.25


def test_the_breaking_strength_is_interpolated_between_levels():
    curve = pd.DataFrame({"strength": [0.0, 0.5, 1.0], "accuracy": [0.9, 0.88, 0.78]})
    # floor 0.85 lies 0.03 / 0.10 of the way from 0.88 to 0.78: strength 0.5 + 0.3 * 0.5
    assert breaking_strength(curve, 0.05) == pytest.approx(0.65)
    assert breaking_strength(curve, 0.2) is None


def test_the_challenger_on_a_linearly_separable_table_matches_a_perfect_champion():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (400, 5)).astype(np.float32)
    margin = x @ np.array([1.0, -2.0, 0.5, 0.0, 1.0])
    keep = np.abs(margin) > 0.5  # a gap around the boundary: linearly separable
    x, labels = x[keep], (margin[keep] > 0).astype(int)
    scaler, challenger = fit_challenger(x, labels, seed=0)
    theirs = challenger.predict(scaler.transform(x))
    assert (theirs == labels).all()
    low, high = paired_bootstrap(np.ones(len(labels), bool), theirs == labels, seed=0)
    assert low == high == 0.0
    low, high = paired_bootstrap(np.r_[np.ones(50), np.zeros(50)].astype(bool), np.ones(100, bool), seed=0)
    assert high < 0  # a champion right half the time loses to a challenger always right


def test_model_card_thresholds_and_materiality(tmp_path):
    card = tmp_path / "card.yaml"
    card.write_text("materiality: Medium\nthresholds:\n  calibration.ece: 0.02\n"
                    "revalidation_triggers:\n  - input shift\n")
    stored = store_model_card(card, tmp_path / "run")
    assert stored["materiality"] == "medium" and stored["thresholds"]["calibration.ece"] == 0.02
    assert stored["thresholds"]["fairness.equalized_odds"] == THRESHOLDS["fairness.equalized_odds"][0]
    assert stored["thresholds_stated"] == ["calibration.ece"]
    record = json.loads((tmp_path / "run" / "model_card.json").read_text())
    assert record["thresholds"] == stored["thresholds"]
    for text, message in (("thresholds:\n  made.up: 1\n", "unknown thresholds"),
                          ("thresholds:\n  calibration.ece: high\n", "must be a number"),
                          ("thresholds: [1]\n", "must be a mapping"),
                          ("materiality: extreme\n", "materiality must be one of")):
        card.write_text(text)
        with pytest.raises(InputError, match=message):
            read_model_card(card)


def test_the_traceability_table_lists_every_check_exactly_once():
    from tasks.report.traceability import CORE, OWNER_CLAUSES, traces
    from tasks.steps.model_card import OWNER_ITEMS

    declared = [c for trace in traces() for c in trace.checks]
    assert len(declared) == len(set(declared))
    made = set()  # every check id the code can make: the first argument of each Check(...) in tasks/ and flows/
    for path in [*(ROOT / "tasks").rglob("*.py"), *(ROOT / "flows").rglob("*.py")]:
        made |= set(re.findall(r'Check\(\s*"([a-z_.-]+)"', path.read_text()))
    assert made and made == set(declared)
    from tasks.run.checks import SEVERITIES, SEVERITY_LEVELS

    assert set(SEVERITIES) == made and set(SEVERITIES.values()) <= set(SEVERITY_LEVELS)  # each has a severity
    assert all(len(trace.clauses) == 3 for trace in traces()[len(CORE):])
    assert set(OWNER_CLAUSES) == set(OWNER_ITEMS)


def test_materiality_decides_which_techniques_run():
    from tasks.techniques.registry import TECHNIQUES, unavailable

    by_name = {t.name: t for t in TECHNIQUES}
    none = {}
    assert unavailable(by_name["lime"], none, "high") is None
    assert "materiality low" in unavailable(by_name["robustness"], none, "low")
    assert unavailable(by_name["calibration"], none, "low") is None
    # a technique that reads another's files never runs where that one does not
    for t in TECHNIQUES:
        for other in TECHNIQUES:
            if set(other.writes) & set(t.reads):
                assert ["low", "medium", "high"].index(t.materiality) >= ["low", "medium", "high"].index(
                    other.materiality), (t.name, other.name)


def test_protected_columns_leave_the_features_and_become_groups(tmp_path):
    from tasks.data.sources import load_dataset

    table = pd.DataFrame({"x1": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], "sex": ["f", "m", "f", "m", None, "f"],
                          "y": [0, 1, 0, 1, 0, 1]})
    path = tmp_path / "t.csv"
    table.to_csv(path, index=False)
    data = load_dataset(f"csv:{path}", "y", ("sex",))
    assert data.feature_names == ["x1"] and data.groups == {"sex": ["f", "m", "f", "m", "missing", "f"]}
    with pytest.raises(InputError, match="no protected column"):
        load_dataset(f"csv:{path}", "y", ("age",))
    with pytest.raises(InputError, match="give --metadata FILE"):
        load_dataset("digits", None, ("sex",))


def test_image_groups_come_from_a_metadata_file_keyed_by_file_name(tmp_path):
    from tasks.data.sources import load_dataset
    from tests.conftest import write_imagefolder

    folder = write_imagefolder(tmp_path / "images", {"cat": 3, "dog": 3})
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    metadata = tmp_path / "meta.csv"
    metadata.write_text("file,site\n" + "".join(f"{name},{'north' if i % 2 else 'south'}\n"
                                                for i, name in enumerate(files[:-1])))
    data = load_dataset(f"imagefolder:{folder}", None, ("site",), metadata)
    by_file = dict(zip((s.split(":", 1)[1] for s in data.source_ids), data.groups["site"]))
    assert by_file[files[0]] == "south" and by_file[files[1]] == "north"
    assert by_file[files[-1]] == "not in metadata"
    metadata.write_text("name,site\na.png,x\n")
    with pytest.raises(InputError, match="no 'file' column"):
        load_dataset(f"imagefolder:{folder}", None, ("site",), metadata)


def test_group_values_that_read_the_same_or_would_merge_are_refused(tmp_path):
    from tasks.data.sources import load_dataset
    from tests.conftest import write_imagefolder

    for sex, message in ((["female", "female\u200b", "male", "male", "female", "male"], "read the same"),
                         (["missing", None, "male", "male", "female", "male"], "holds the value 'missing' and empty")):
        path = tmp_path / "t.csv"
        pd.DataFrame({"x1": np.arange(6.0), "sex": sex, "y": [0, 1, 0, 1, 0, 1]}).to_csv(path, index=False)
        with pytest.raises(InputError, match=message):
            load_dataset(f"csv:{path}", "y", ("sex",))
    folder = write_imagefolder(tmp_path / "images", {"cat": 3, "dog": 3})  # both folders hold 0.png, 1.png, ...
    names = sorted({p.name for p in folder.rglob("*.png")})
    metadata = tmp_path / "meta.csv"
    metadata.write_text("file,site\n" + "".join(f"{name},north\n" for name in names))
    with pytest.raises(InputError, match="names several rows"):
        load_dataset(f"imagefolder:{folder}", None, ("site",), metadata)


def test_an_owner_challenger_in_onnx_gives_its_probabilities_and_a_wrong_one_is_refused(tmp_path):
    from sklearn.linear_model import LogisticRegression

    from tasks.techniques.challenger import owner_challenger
    from tests.test_supplied import sklearn_onnx

    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (200, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    estimator = LogisticRegression().fit(x, y)
    path = sklearn_onnx(estimator, x, y, tmp_path / "challenger.onnx")
    probs = owner_challenger(path, x, [f"x{i}" for i in range(4)], 2)
    np.testing.assert_allclose(probs, estimator.predict_proba(x), atol=1e-5)  # float32 graph, float64 reference
    with pytest.raises(InputError, match="returns shape"):
        owner_challenger(path, x, [f"x{i}" for i in range(4)], 3)
    with pytest.raises(InputError, match="--challenger .* cannot run on the data"):
        owner_challenger(path, x[:, :3], [f"x{i}" for i in range(3)], 2)
    (tmp_path / "pickle.pt").write_bytes(b"\x80\x04\x95")
    with pytest.raises(InputError, match="--challenger"):
        owner_challenger(tmp_path / "pickle.pt", x, [], 2)


def test_the_vectorised_bootstrap_measures_what_fairlearn_measures():
    """Every 'resample' the rows themselves: the interval collapses onto the point value fairlearn computes."""
    from fairlearn.metrics import demographic_parity_difference, demographic_parity_ratio, equalized_odds_difference

    from tasks.techniques.fairness import bootstrap_parity

    rng = np.random.default_rng(3)
    y_true, y_pred = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    groups = rng.choice(["a", "b", "c"], 300)
    codes, levels = pd.factorize(groups, sort=True)
    same = bootstrap_parity(y_true, y_pred, codes, len(levels), np.tile(np.arange(300), (4, 1)))
    for name, reference in (("dp_difference", demographic_parity_difference), ("dp_ratio", demographic_parity_ratio),
                            ("eo_difference", equalized_odds_difference)):
        expected = reference(y_true, y_pred, sensitive_features=groups)
        assert same[f"{name}_low"] == pytest.approx(expected, abs=1e-12) == same[f"{name}_high"]


@pytest.mark.parametrize("write", ["csv", "parquet"])
def test_a_table_written_with_its_row_index_is_refused_not_learned(tmp_path, write):
    from tasks.data.sources import load_dataset

    frame = pd.DataFrame({"x": [0.3, 0.1, 0.2, 0.4] * 3, "y": [0, 0, 1, 1] * 3}).sort_values("y")
    path = tmp_path / f"t.{write}"
    if write == "csv":
        frame.to_csv(path)  # pandas' default: the (label-sorted) row index as an unnamed first column
    else:
        frame.to_parquet(path)  # sorted: not a range any more, so pandas stores the index as a column
    with pytest.raises(InputError, match="have no name: a row index written with the data"):
        load_dataset(f"{write}:{path}", "y")
