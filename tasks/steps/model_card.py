"""The model card: who owns the model, what it is for and not for, its limitations and risk tier; its
materiality (the depth of review: which optional techniques run), its revalidation triggers, the
thresholds its checks are held to, and what only the owner can document (human oversight, ...).

A YAML file passed with ``--model-card``; read with ``yaml.safe_load`` (no Python objects), copied
into the run directory as ``model_card.yaml`` so the manifest hashes it, and shown in the report,
with "not provided" for every field it lacks. ``model_card.json`` (always written) is what the
techniques read: the thresholds in force (the card's, else the defaults) and the materiality.

    thresholds:
      calibration.ece: 0.03        # check id -> bound; see THRESHOLDS for the ids and defaults
    materiality: medium            # low | medium | high (default: high, the full review)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from tasks.run import layout
from tasks.run.artifacts import read_user_text, sha256_file, write_bytes_atomic, write_json_atomic
from tasks.run.checks import SEVERITIES, Check
from tasks.run.errors import InputError, user_path

FIELDS = {  # key in the YAML file -> heading in the report
    "model_name": "Model name",
    "version": "Version",
    "owner": "Owner",
    "intended_use": "Intended use",
    "out_of_scope_uses": "Out-of-scope uses",
    "limitations": "Limitations",
    "risk_tier": "Risk tier",
    "favourable_outcome": "Favourable outcome",  # the class that is good for the person (fairness' selection)
    # Which fairness measures apply to this use (FAIRNESS_MEASURES; default: demographic parity, equalized odds)
    "fairness_measures": "Fairness measures that apply",
    "materiality": "Materiality",  # low | medium | high: how deep the review goes (MATERIALITY)
    "revalidation_triggers": "Revalidation triggers",  # events that call for a new validation
    # Where a supplied model's evaluation data comes from (LINEAGES): in-sample data is a material finding
    "evaluation_data": "Evaluation data lineage",
    # What a report cannot measure, documented by the owner (EU AI Act Annex IV 2(e), 3, 5, 9):
    "human_oversight": "Human oversight",
    "risk_management": "Risk-management system",
    "post_market_monitoring": "Post-market monitoring plan",
}
OWNER_ITEMS = ("human_oversight", "risk_management", "post_market_monitoring")
MATERIALITY = ("low", "medium", "high")  # a technique runs at its level and above (registry: `materiality`)
DEFAULT_MATERIALITY = "high"  # a card that does not say gets the full review
THRESHOLDS = {  # check id -> (default bound, what it bounds); a card's `thresholds` may set any of them
    "performance.recall_floor": (0.5, "recall below which a class fails, when significantly below (95% bound)"),
    "calibration.ece": (0.05, "expected calibration error, at most"),
    "fairness.selection_rate_ratio": (0.8, "lowest group selection rate over the highest, at least (four-fifths)"),
    "fairness.equalized_odds": (0.1, "equalized odds difference, at most"),
    "fairness.equal_opportunity": (0.1, "equal opportunity difference (true positive rates), at most"),
    "robustness.accuracy_drop": (0.05, "accuracy drop that defines breaking, in accuracy points"),
    "robustness.min_strength": (0.5, "share of the strength range a perturbation must survive, at least"),
    "challenger.margin": (0.0, "champion accuracy minus challenger's, upper 95% bound, at least"),
}
THRESHOLD_RANGES = {  # check id -> the bounds a threshold can meaningfully take (others no run can meet)
    "challenger.margin": (-1.0, 1.0), "robustness.accuracy_drop": (0.0, 1.0)}  # every other one: [0, 1]
FAIRNESS_MEASURES = {"demographic_parity": "fairness.selection_rate_ratio", "equalized_odds": "fairness.equalized_odds",
                     "equal_opportunity": "fairness.equal_opportunity"}  # measure -> the check that holds it
DEFAULT_FAIRNESS = ("demographic_parity", "equalized_odds")
LINEAGES = ("independent", "out-of-time", "in-sample", "unknown")  # of the evaluation data, as the card states it
SEVERITY_LEVELS = ("material", "moderate", "minor")  # a card's `severities`: check id -> one of these
MAX_BYTES = 1_000_000  # a model card is a short document
MAX_DEPTH = 20  # nesting of lists and mappings in a card
MAX_NODES = 20_000  # YAML nodes built, merge keys (<<) expanded included: bounds the work, not only the bytes
NOT_PROVIDED = "not provided"


def read_model_card(path: Path) -> dict[str, str | list[str]]:
    """The card's fields as text or lists of text; InputError naming the file for anything else."""
    path = user_path(path)
    if not path.exists():
        raise InputError(f"model card {path} does not exist")
    text = read_user_text(path, "model card", MAX_BYTES)
    loader = _CardLoader(text)
    try:
        card = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise InputError(f"model card {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    except _CardTooLarge as exc:
        raise InputError(f"model card {path}: {exc}") from None
    finally:
        loader.dispose()
    if card is None:
        card = {}
    if not isinstance(card, dict):
        raise InputError(f"model card {path} must be a mapping of fields ({', '.join(FIELDS)})")
    unknown = sorted(str(k) for k in card if k not in FIELDS and k not in ("thresholds", "severities"))
    if unknown:
        raise InputError(f"model card {path}: unknown fields {unknown}; the fields are "
                         f"{', '.join([*FIELDS, 'thresholds', 'severities'])}")
    fields = {"thresholds": _thresholds(card.pop("thresholds", None) or {}, path),
              "severities": _severities(card.pop("severities", None) or {}, path)}
    measures = card.get("fairness_measures")
    if measures is not None and (not isinstance(measures, list) or not measures
                                 or not set(map(str, measures)) <= set(FAIRNESS_MEASURES)):
        raise InputError(f"model card {path}: fairness_measures must be a list of {', '.join(FAIRNESS_MEASURES)}, "
                         f"not {measures!r}")
    if card.get("evaluation_data") is not None and str(card["evaluation_data"]).lower() not in LINEAGES:
        raise InputError(f"model card {path}: evaluation_data must be one of {', '.join(LINEAGES)}, "
                         f"not {card['evaluation_data']!r}")
    if card.get("materiality") is not None and str(card["materiality"]).lower() not in MATERIALITY:
        raise InputError(f"model card {path}: materiality must be one of {', '.join(MATERIALITY)}, "
                         f"not {card['materiality']!r}")
    for key, value in card.items():
        if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
            fields[key] = [str(v) for v in value]
        elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
            fields[key] = str(value)
        elif value is not None:
            raise InputError(f"model card {path}: field {key!r} must be text or a list of text")
    return fields


def _thresholds(given, path: Path) -> dict[str, float]:
    if not isinstance(given, dict):
        raise InputError(f"model card {path}: thresholds must be a mapping of check id to number")
    unknown = sorted(str(k) for k in given if k not in THRESHOLDS)
    if unknown:
        raise InputError(f"model card {path}: unknown thresholds {unknown}; they are {', '.join(THRESHOLDS)}")
    for key, value in given.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InputError(f"model card {path}: threshold {key} must be a number, not {value!r}")
        low, high = THRESHOLD_RANGES.get(key, (0.0, 1.0))
        if not low <= value <= high:
            raise InputError(f"model card {path}: threshold {key} must be between {low:g} and {high:g} "
                             f"({THRESHOLDS[key][1]}), not {value!r}")
    return {key: float(value) for key, value in given.items()}


def _severities(given, path: Path) -> dict[str, str]:
    if not isinstance(given, dict):
        raise InputError(f"model card {path}: severities must be a mapping of check id to material, moderate or minor")
    unknown = sorted(str(k) for k in given if k not in SEVERITIES)
    if unknown:
        raise InputError(f"model card {path}: unknown check ids in severities {unknown}; they are "
                         f"{', '.join(SEVERITIES)}")
    bad = {k: v for k, v in given.items() if str(v).lower() not in SEVERITY_LEVELS}
    if bad:
        raise InputError(f"model card {path}: severities must be one of {', '.join(SEVERITY_LEVELS)}, not {bad}")
    return {key: str(value).lower() for key, value in given.items()}


class _CardTooLarge(Exception):
    """A card the bounded loader refuses: too deep, too many nodes, a key given twice."""


class _CardLoader(yaml.SafeLoader):
    """yaml's safe loader, bounded: nesting depth and the nodes built (merge keys expanded) are limited, and a key
    given twice in one mapping is refused (the last value would otherwise win in silence)."""

    def __init__(self, stream):
        super().__init__(stream)
        self.depth, self.nodes = 0, 0

    def compose_node(self, parent, index):
        self.depth += 1
        self.nodes += 1
        if self.depth > MAX_DEPTH:
            raise _CardTooLarge(f"nested more than {MAX_DEPTH} levels deep")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def flatten_mapping(self, node):
        self.nodes += len(node.value)
        if self.nodes > MAX_NODES:
            raise _CardTooLarge(f"expands to more than {MAX_NODES:,} YAML nodes (merge keys included)")
        super().flatten_mapping(node)
        self.nodes += len(node.value)
        if self.nodes > MAX_NODES:
            raise _CardTooLarge(f"expands to more than {MAX_NODES:,} YAML nodes (merge keys included)")

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:  # as written: a key a merge (<<) brings in may be overridden
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    if key_node.value in seen:
                        raise _CardTooLarge(f"the key {key_node.value!r} is given twice (line "
                                            f"{key_node.start_mark.line + 1})")
                    seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def store_model_card(path: Path | None, run_dir: Path) -> dict:
    """Copy the card into the run directory, write ``model_card.json`` (thresholds in force, materiality) and
    return every field, "not provided" where missing."""
    fields = {"thresholds": {}}
    if path is not None:
        fields = read_model_card(path)
        write_bytes_atomic(layout.path(run_dir, "model_card"), Path(path).expanduser().read_bytes())
    materiality = str(fields.get("materiality", DEFAULT_MATERIALITY)).lower()
    record = {"provided": path is not None, "materiality": materiality,
              "materiality_stated": "materiality" in fields,
              "thresholds": {key: fields["thresholds"].get(key, default) for key, (default, _) in THRESHOLDS.items()},
              "thresholds_stated": sorted(fields["thresholds"]),
              "severities": fields.get("severities", {}),
              "intended_use_declared": "intended_use" in fields,
              "evaluation_data": str(fields.get("evaluation_data", "unknown")).lower(),
              "evaluation_data_stated": "evaluation_data" in fields,
              "fairness_measures": list(fields.get("fairness_measures", DEFAULT_FAIRNESS)),
              "fields": [{"key": key, "heading": heading, "value": fields.get(key, NOT_PROVIDED),
                          "missing": key not in fields} for key, heading in FIELDS.items()]}
    written = write_json_atomic(layout.path(run_dir, "card_record"), record)
    return {**record, "files": {"card_record": {"path": str(written), "sha256": sha256_file(written)}},
            "checks": [monitoring_plan_check("post_market_monitoring" in fields).to_json()]}


def monitoring_plan_check(stated: bool) -> Check:
    """governance.monitoring_plan: the card states how the model is watched once in use (SR 26-2 ongoing
    monitoring; EU AI Act Art. 72)."""
    return Check("governance.monitoring_plan", "Model card", "monitoring plan stated (post_market_monitoring)",
                 1.0 if stated else 0.0, 1.0, "at least", "1. Purpose and use",
                 "No monitoring plan: the model card does not say what is watched once the model is in use, against "
                 "which thresholds and how often (post_market_monitoring).", unit="count")


def read_card_record(card_record: str | Path) -> dict:
    """The run's model_card.json (written by `store_model_card`): what the techniques hold the model to."""
    return json.loads(Path(card_record).read_text())


def stated(card: dict, key: str):
    """The value the model card gives for field `key` (a card record's `fields`), or None where it gives none."""
    return next((f["value"] for f in card.get("fields", []) if f["key"] == key and not f["missing"]), None)


def threshold(card_record: str | Path, check_id: str) -> float:
    """The bound the check `check_id` is held to in this run (model_card.json, written by `store_model_card`)."""
    return float(read_card_record(card_record)["thresholds"][check_id])
