"""Where every file of a run directory lives: the one place run-relative paths are spelled.

Steps, techniques, the report and the tests ask for files by key (`path(run_dir, "shap_values")`),
so moving a file is a one-line change here. `VERSION` is recorded in the manifest: a later run
compares itself only with runs of the same layout.
"""

from __future__ import annotations

from pathlib import Path

VERSION = "run-layout/2"

FILES = {  # key -> path relative to the run directory
    "run_record": "run.json",  # the parameters the run was started with (what --resume uses)
    "train": "data/train.parquet",
    "validation": "data/validation.parquet",
    "metrics": "training/metrics.parquet",
    "metrics_per_class": "training/metrics_per_class.parquet",
    "model": "model/model.json",  # the model record: which file, its hash, outputs, what it allows
    "weights": "model/model.safetensors",  # the reference model trained here (or supplied as safetensors)
    "model_pt2": "model/model.pt2",  # a supplied model's copy, by format
    "model_torchscript": "model/model.torchscript.pt",
    "model_onnx": "model/model.onnx",
    "evaluation": "model/evaluation.parquet",  # a supplied model's prediction for every row
    "weight_statistics": "inspect/weights.parquet",
    # The SHAP stage (tasks/deepshap/stage.py)
    "plan": "deepshap/plan.parquet",
    "background": "deepshap/background.parquet",
    "predictions": "deepshap/predictions.parquet",
    "shap_values": "deepshap/shap_values.parquet",
    "explained": "deepshap/explained.parquet",
    # Other attributions of the explained rows
    "gradients": "attributions/gradients.parquet",
    "kernel_shap": "attributions/kernel_shap.parquet",
    "lime": "attributions/lime.parquet",
    # Global and sliced analyses
    "permutation_importance": "analysis/permutation_importance.parquet",
    "partial_dependence": "analysis/partial_dependence.parquet",
    "slices": "analysis/slices.parquet",
    "floors": "analysis/floors.parquet",  # per class: rows, recall and its bound, the share of predictions
    "data_quality": "analysis/data_quality.parquet",  # per column or channel: training range, constant, outside
    "findings": "analysis/findings.parquet",  # the findings register: every failed or unassessable check, graded
    "agreement": "analysis/agreement.parquet",
    # What validators check beyond explanations
    "calibration": "analysis/calibration.parquet",
    "robustness": "analysis/robustness.parquet",
    "robustness_missing": "analysis/robustness_missing.parquet",
    "fairness": "analysis/fairness.parquet",
    "fairness_groups": "analysis/fairness_groups.parquet",
    "challenger": "analysis/challenger.parquet",
    "challenger_weights": "model/challenger.safetensors",  # the built-in challenger
    "challenger_model": "model/challenger_model",  # or the owner's (--challenger), a copy, any --model format
    "outcomes": "analysis/outcomes.parquet",
    # Faithfulness evidence
    "randomisation": "quality/randomisation.parquet",
    "deletion_insertion": "quality/deletion_insertion.parquet",
    "stability": "quality/stability.parquet",
    # Against the previous run
    "comparison_metrics": "comparison/metrics.parquet",
    "comparison_importance": "comparison/importance.parquet",
    "comparison_data_shift": "comparison/data_shift.parquet",
    "comparison_predictions": "comparison/predictions.parquet",
    "comparison_summary": "comparison/summary.json",
    # The report
    "model_card": "model_card.yaml",  # the owner's card, as given
    "card_record": "model_card.json",  # what the run holds the model to: thresholds, materiality
    "artifacts": "artifacts.json",  # every file written before the PDF, with its SHA-256; embedded in the PDF
    "report": "report.pdf",
    "manifest": "manifest.json",  # every file with its SHA-256, written last
}
DIRS = {
    "shards": "deepshap/shards",
    "figures": "figures",
    "results": ".prefect-results",  # Prefect's cached step results (JSON), what --resume reuses
}
ATTACHMENTS = {  # keys of the files report.pdf carries inside it -> description
    "artifacts": "SHA-256 of every file of the run written before this PDF (manifest.json adds the PDF)",
    "metrics": "per-epoch training and validation metrics",
    "metrics_per_class": "per-epoch, per-class precision, recall and F1",
}


def path(run_dir: Path | str, key: str) -> Path:
    """The file `key` of FILES inside `run_dir`."""
    return Path(run_dir) / FILES[key]


def folder(run_dir: Path | str, key: str) -> Path:
    """The directory `key` of DIRS inside `run_dir`."""
    return Path(run_dir) / DIRS[key]


def paths(run_dir: Path | str, keys) -> dict[str, str]:
    """{key: path} for several keys, as steps receive their input files."""
    return {key: str(path(run_dir, key)) for key in keys}


def shard_file(run_dir: Path | str, start: int, stop: int) -> Path:
    """One SHAP shard's file: the rows [start, stop) of the plan."""
    return folder(run_dir, "shards") / f"shard-{start:06d}-{stop:06d}.parquet"


def shard_rows(shard: Path) -> tuple[int, int]:
    """[start, stop) of a shard file named by `shard_file`."""
    start, stop = (int(n) for n in Path(shard).stem.split("-")[1:])
    return start, stop


def slug(text: str, keep: str = "") -> str:
    """`text` as a name part of a run directory or a flow run: letters and digits (and the characters in `keep`)
    as they are, anything else a dash; no dash or dot at either end."""
    return "".join(ch if ch.isalnum() or ch in keep else "-" for ch in text).strip("-.")
