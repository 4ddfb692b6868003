"""Typed configuration of a run: a plain, validated value (no I/O; flows/preflight.py checks the files)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from tasks.data.specs import parse_dataset_spec
from tasks.run import layout
from tasks.run.errors import InputError, require_utf8, user_path

SHAP_ENGINES = ("fast", "shap")  # tasks/deepshap/engine.py, or shap.DeepExplainer itself
OUTPUT_KINDS = ("logits", "probabilities")
# The defaults of --background and --explain: cut to the split's rows when it has fewer (tasks/steps/load.py
# `fit_sizes`); a value the user gives must fit.
DEFAULT_BACKGROUND, DEFAULT_EXPLAIN = 200, 32


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides what a compliance report run computes."""

    dataset: str = "digits"  # dataset spec: see tasks/data/specs.py
    model: Path | None = None  # the user's model file (tasks/model/formats.py); None: train the reference model
    outputs: str | None = None  # the model's outputs: logits | probabilities; None: detected
    label: str | None = None  # csv/parquet datasets: the column holding the class
    epochs: int = 8  # training epochs
    background: int | None = None  # training rows in the SHAP background ("mask"); None: DEFAULT_BACKGROUND
    explain_rows: int | None = None  # validation rows explained (DeepSHAP, other local methods); None: DEFAULT_EXPLAIN
    seed: int = 0  # seeds the split, weight init, shuffling and row selection
    out: Path = field(default=Path("reports"))  # parent directory of run directories
    batch_size: int = 64  # training batch size
    val_fraction: float = 0.2  # share of the data held out for validation (stratified)
    shap_engine: str = "fast"  # DeepSHAP implementation: see SHAP_ENGINES
    shard_size: int | None = None  # rows per SHAP shard (flows/deepshap.py); None: 8 on a CPU, 512 on a GPU
    model_card: Path | None = None  # YAML model card (owner, intended use, ...), shown in the report
    compare: Path | None = None  # an earlier run to compare with; None: the newest one of the dataset in `out`
    resume: Path | None = None  # an unfinished run directory to finish (its finished steps are reused)
    protected: tuple[str, ...] = ()  # protected attributes for the fairness assessment (tasks/data/protected.py)
    metadata: Path | None = None  # CSV of protected attributes per row ('file' column); else a table's own columns
    keep_protected: bool = False  # tables: keep the protected columns among the model's features
    challenger: Path | None = None  # the owner's challenger model file (--model formats); None: logistic regression
    positive_class: str | None = None  # binary data: the class scores and explanations speak for; None: the second

    def __post_init__(self) -> None:
        for field_ in fields(self):  # every text and path given, before anything is derived from it
            values = getattr(self, field_.name)
            for value in values if isinstance(values, tuple) else (values,):
                if isinstance(value, (str, Path)):
                    require_utf8(str(value), f"--{field_.name.replace('_', '-')}")
        for name in ("epochs", "background", "explain_rows", "batch_size", "shard_size"):
            value = getattr(self, name)
            if name in ("shard_size", "background", "explain_rows") and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InputError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**32:
            raise InputError(f"--seed must be an integer from 0 to {2**32 - 1}, got {self.seed!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise InputError(f"validation fraction must be between 0 and 1, got {self.val_fraction!r}")
        if self.shap_engine not in SHAP_ENGINES:
            raise InputError(f"--shap-engine must be one of {', '.join(SHAP_ENGINES)}, got {self.shap_engine!r}")
        parse_dataset_spec(self.dataset, self.label)
        if self.outputs not in (None, *OUTPUT_KINDS):
            raise InputError(f"--outputs must be one of {', '.join(OUTPUT_KINDS)}, got {self.outputs!r}")
        for name in ("out", "model", "model_card", "compare", "resume", "metadata", "challenger"):
            value = getattr(self, name)
            if value is not None:  # "~someone/..." for a user this system does not know: one line
                object.__setattr__(self, name, user_path(value, f"--{name.replace('_', '-')}", resolve=False))
        protected = self.protected.split(",") if isinstance(self.protected, str) else list(self.protected or ())
        protected = tuple(str(name).strip() for name in protected)
        if any(not name for name in protected) or len(set(protected)) != len(protected):
            raise InputError(f"--protected must name distinct columns, separated by commas, got {self.protected!r}")
        object.__setattr__(self, "protected", protected)
        if self.metadata is not None and not protected:
            raise InputError("--metadata gives protected attributes: name them with --protected COLUMN[,COLUMN]")

    def to_json(self) -> dict:
        """Plain JSON-able parameters, as recorded in run.json, the manifest and the report."""
        values = asdict(self)
        for key in ("out", "model", "model_card", "compare", "resume", "metadata", "challenger"):
            values[key] = str(values[key]) if values[key] is not None else None
        values["protected"] = list(self.protected)
        return values


def run_name(dataset: str, model: str | Path | None, day: str) -> str:
    """A flow run's name: the data, the owner's model (none: the reference model) and the day, e.g.
    ``digits-2026-12-01``, ``loans-scorecard-2026-12-01`` (csv:loans.csv, --model scorecard.onnx). The
    Prefect UI lists runs by it, so the monthly report of a dataset is found by its name."""
    kind, arg = dataset.partition(":")[::2]
    parts = [kind if kind == "cifar10" or not arg else Path(arg.rstrip("/")).stem or kind]
    if model:
        parts.append(Path(str(model)).stem)
    return f"{'-'.join(layout.slug(part, keep='._') or 'data' for part in parts)[:60]}-{day}"
