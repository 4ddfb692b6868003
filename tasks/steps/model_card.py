"""The model card: who owns the model, what it is for and not for, its limitations and risk tier.

A YAML file passed with ``--model-card``; read with ``yaml.safe_load`` (no Python objects), copied
into the run directory as ``model_card.yaml`` so the manifest hashes it, and shown in the report,
with "not provided" for every field it lacks.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tasks.run import layout
from tasks.run.artifacts import write_bytes_atomic
from tasks.run.errors import InputError

FIELDS = {  # key in the YAML file -> heading in the report
    "model_name": "Model name",
    "version": "Version",
    "owner": "Owner",
    "intended_use": "Intended use",
    "out_of_scope_uses": "Out-of-scope uses",
    "limitations": "Limitations",
    "risk_tier": "Risk tier",
}
MAX_BYTES = 1_000_000  # a model card is a short document
NOT_PROVIDED = "not provided"


def read_model_card(path: Path) -> dict[str, str | list[str]]:
    """The card's fields as text or lists of text; InputError naming the file for anything else."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise InputError(f"model card {path} does not exist or is not a file")
    if path.stat().st_size > MAX_BYTES:
        raise InputError(f"model card {path} is over {MAX_BYTES:,} bytes")
    try:
        card = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError(f"model card {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if card is None:
        card = {}
    if not isinstance(card, dict):
        raise InputError(f"model card {path} must be a mapping of fields ({', '.join(FIELDS)})")
    unknown = sorted(str(k) for k in card if k not in FIELDS)
    if unknown:
        raise InputError(f"model card {path}: unknown fields {unknown}; the fields are {', '.join(FIELDS)}")
    fields = {}
    for key, value in card.items():
        if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
            fields[key] = [str(v) for v in value]
        elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
            fields[key] = str(value)
        elif value is not None:
            raise InputError(f"model card {path}: field {key!r} must be text or a list of text")
    return fields


def store_model_card(path: Path | None, run_dir: Path) -> dict:
    """Copy the card into the run directory and return every field, "not provided" where missing."""
    fields = {}
    if path is not None:
        fields = read_model_card(path)
        write_bytes_atomic(layout.path(run_dir, "model_card"), Path(path).expanduser().read_bytes())
    return {"provided": path is not None,
            "fields": [{"key": key, "heading": heading, "value": fields.get(key, NOT_PROVIDED),
                        "missing": key not in fields} for key, heading in FIELDS.items()]}
