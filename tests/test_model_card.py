"""The model card: read safely, every field shown or "not provided", bad cards refused clearly."""

import json
from pathlib import Path

import pytest

from tasks.run.config import RunConfig
from tasks.run.errors import InputError
from tasks.steps.model_card import FIELDS, NOT_PROVIDED, read_model_card, store_model_card


def test_fields_are_read_and_missing_ones_are_not_provided(tmp_path):
    card = tmp_path / "card.yaml"
    card.write_text("owner: Risk team\nout_of_scope_uses:\n  - credit decisions\n  - minors\nrisk_tier: 2\n")
    stored = store_model_card(card, tmp_path / "run")
    fields = {f["key"]: f for f in stored["fields"]}
    assert list(fields) == list(FIELDS)
    assert fields["owner"]["value"] == "Risk team" and fields["risk_tier"]["value"] == "2"
    assert fields["out_of_scope_uses"]["value"] == ["credit decisions", "minors"]
    assert fields["intended_use"] == {"key": "intended_use", "heading": "Intended use", "value": NOT_PROVIDED,
                                      "missing": True}
    assert (tmp_path / "run" / "model_card.yaml").read_bytes() == card.read_bytes()


def test_no_card_means_every_field_not_provided(tmp_path):
    stored = store_model_card(None, tmp_path)
    assert not stored["provided"] and all(f["missing"] for f in stored["fields"])
    assert [p.name for p in tmp_path.iterdir()] == ["model_card.json"]  # the defaults in force, for the techniques
    assert stored["materiality"] == "high" and not stored["materiality_stated"]


@pytest.mark.parametrize("text, message", [
    ("owner: [unclosed", "not valid YAML"),
    ("- just\n- a list\n", "must be a mapping"),
    ("owner: x\nsalary: 3\n", "unknown fields \\['salary'\\]"),
    ("owner:\n  name: x\n", "field 'owner' must be text"),
    ("owner: !!python/object/apply:os.system ['echo hi']\n", "not valid YAML"),  # safe_load refuses objects
])
def test_bad_cards_are_refused_with_the_file_named(tmp_path, text, message):
    card = tmp_path / "card.yaml"
    card.write_text(text)
    with pytest.raises(InputError, match=message):
        read_model_card(card)


def test_the_preflight_checks_the_card_and_the_earlier_run_before_anything_runs(tmp_path):
    from flows.preflight import preflight

    config = RunConfig(model_card=tmp_path / "missing.yaml")  # a plain value: nothing is read yet
    with pytest.raises(InputError, match="does not exist"):
        preflight(config)
    with pytest.raises(InputError, match="not a finished run directory"):
        preflight(RunConfig(compare=tmp_path))


def test_the_preflight_verifies_an_earlier_run_once_per_process(monkeypatch, tmp_path):
    """The CLI's preflight and the flow's are one: --compare's run is verified once, not twice."""
    from flows import preflight as preflight_module
    from tasks.run import history, layout

    run = tmp_path / "earlier"
    run.mkdir()
    layout.path(run, "manifest").write_text(json.dumps({"layout": layout.VERSION, "parameters": {"dataset": "digits"},
                                                        "files": {}}))
    calls = []
    monkeypatch.setattr(history, "verify_run", lambda path: calls.append(path) or [])
    first = preflight_module.preflight(RunConfig(compare=run, out=tmp_path / "reports"))
    again = preflight_module.preflight(first)  # what the flow does with the CLI's checked config
    assert again == first and first.compare == run.resolve() and calls == [run.resolve()]
    with pytest.raises(InputError, match="a run of 'digits'.*cannot be compared"):
        preflight_module.preflight(RunConfig(dataset="breast-cancer", compare=run))


def test_special_files_are_refused_in_one_line_without_blocking(tmp_path):
    """A FIFO would block a plain read forever; a device or /proc file has no size to check beforehand."""
    import os

    fifo = tmp_path / "card.fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big.yaml"
    big.write_text("owner: " + "x" * 1_000_001)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("owner: Müller\n".encode("latin-1"))
    for path, message in [(fifo, "is not a regular file"), (Path("/dev/zero"), "is not a regular file"),
                          (tmp_path, "is not a regular file"), (tmp_path / "missing.yaml", "does not exist"),
                          (Path("/proc/self/mem"), "cannot be read"), (big, "is over 1,000,000 bytes"),
                          (latin1, r"is not UTF-8 text \(byte 8\)")]:
        with pytest.raises(InputError, match=message):
            read_model_card(path)
