"""Typed configuration of a run, validated at the edge (command line or flow parameters)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from tasks.errors import InputError

SHAP_ENGINES = ("fast", "shap")  # tasks/deep_shap.py, or shap.DeepExplainer itself
BUILT_IN = ("digits", "breast-cancer")  # ship inside scikit-learn
DIRECTORY_KINDS = ("cifar10", "imagefolder")  # image sources: KIND:DIR
FILE_KINDS = ("csv", "parquet")  # tables: KIND:FILE, with --label COLUMN
SPEC_HELP = "digits, breast-cancer, cifar10:DIR, imagefolder:DIR, csv:FILE or parquet:FILE"


def check_dataset_spec(spec: str, label: str | None = None) -> None:
    """Cheap checks of a dataset spec, before any work starts: known kind, existing directory or file."""
    kind, sep, arg = spec.partition(":")
    if kind not in BUILT_IN + DIRECTORY_KINDS + FILE_KINDS:
        raise InputError(f"unknown dataset spec {spec!r}: use {SPEC_HELP}")
    if kind in BUILT_IN and sep:
        raise InputError(f"dataset spec {spec!r}: {kind} takes no argument")
    if kind in FILE_KINDS and not label:
        raise InputError(f"dataset spec {spec!r} needs --label COLUMN, the column holding the class")
    if label and kind not in FILE_KINDS:
        raise InputError(f"--label is for csv:FILE and parquet:FILE datasets, not {kind}")
    if kind in DIRECTORY_KINDS + FILE_KINDS:
        if not arg:
            raise InputError(f"dataset spec {spec!r} needs a {'directory' if kind in DIRECTORY_KINDS else 'file'}: "
                             f"{kind}:{'DIR' if kind in DIRECTORY_KINDS else 'FILE'}")
        path = Path(arg).expanduser()
        if kind in DIRECTORY_KINDS and not path.is_dir():
            raise InputError(f"dataset directory {path.resolve()} does not exist or is not a directory")
        if kind in FILE_KINDS and not path.is_file():
            raise InputError(f"dataset file {path.resolve()} does not exist or is not a file")


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides what a compliance report run computes."""

    dataset: str = "digits"  # dataset spec: see SPEC_HELP
    label: str | None = None  # csv/parquet datasets: the column holding the class
    epochs: int = 8  # training epochs
    background: int = 200  # training images in the SHAP background ("mask")
    explain: int = 32  # validation images explained with SHAP
    seed: int = 0  # seeds the split, weight init, shuffling and image selection
    out: Path = field(default=Path("reports"))  # parent directory of run directories
    batch_size: int = 64  # training batch size
    val_fraction: float = 0.2  # share of the data held out for validation (stratified)
    shap_engine: str = "fast"  # DeepSHAP implementation: see SHAP_ENGINES
    shard_size: int = 8  # rows per SHAP shard, the unit of work of the explain stage's workers (flows/explain.py)
    model_card: Path | None = None  # YAML model card (owner, intended use, ...), shown in the report
    compare: Path | None = None  # an earlier run to compare with; None: the newest one of the dataset in `out`
    resume: Path | None = None  # an unfinished run directory to finish (its finished steps are reused)

    def __post_init__(self) -> None:
        for name in ("epochs", "background", "explain", "batch_size", "shard_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InputError(f"--{name} must be a positive integer, got {value!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise InputError(f"--seed must be a non-negative integer, got {self.seed!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise InputError(f"validation fraction must be between 0 and 1, got {self.val_fraction!r}")
        if self.shap_engine not in SHAP_ENGINES:
            raise InputError(f"--shap-engine must be one of {', '.join(SHAP_ENGINES)}, got {self.shap_engine!r}")
        object.__setattr__(self, "out", Path(self.out))
        check_dataset_spec(self.dataset, self.label)
        from tasks.compare import check_previous_run  # here: tasks.compare imports (via tasks.load) this module
        from tasks.model_card import read_model_card

        if self.model_card is not None:
            object.__setattr__(self, "model_card", Path(self.model_card).expanduser().resolve())
            read_model_card(self.model_card)
        if self.compare is not None:
            object.__setattr__(self, "compare", check_previous_run(Path(self.compare)))
        if self.resume is not None:
            from tasks.resume import resumable_parameters

            object.__setattr__(self, "resume", Path(self.resume).expanduser().resolve())
            recorded = resumable_parameters(self.resume)
            mine = {k: v for k, v in self.to_json().items() if k != "resume"}
            differing = sorted(k for k in mine if k in recorded and recorded[k] != mine[k])
            if differing:
                raise InputError(f"--resume {self.resume}: it was started with other {', '.join(differing)}; "
                                 "resume it with its recorded parameters (run.json)")

    def to_json(self) -> dict:
        """Plain JSON-able parameters, as recorded in the manifest and the report."""
        values = asdict(self)
        for key in ("out", "model_card", "compare", "resume"):
            values[key] = str(values[key]) if values[key] is not None else None
        return values
