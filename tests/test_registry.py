"""The technique registry is coherent: every entry's files, partial and order make sense, and what a step
returns matches what its entry declares."""

import pytest

from tasks.report.render import TEMPLATES_DIR
from tasks.run import layout
from tasks.techniques.registry import CORE_FILES, MODALITIES, PLACES, TECHNIQUES, Technique, applicable, run_order


def test_every_entry_names_real_files_a_partial_and_a_place():
    assert len({t.name for t in TECHNIQUES}) == len(TECHNIQUES)
    for t in TECHNIQUES:
        assert set(t.reads) | set(t.writes) <= set(layout.FILES), t.name
        assert (TEMPLATES_DIR / "sections" / t.partial).is_file(), t.partial
        assert t.place in PLACES and set(t.modalities) <= set(MODALITIES), t.name
    assert set(CORE_FILES) <= set(layout.FILES)


@pytest.mark.parametrize("modality", MODALITIES)
def test_run_order_puts_each_technique_after_the_files_it_reads(modality):
    written = set(CORE_FILES)
    for t in run_order(applicable(modality)):
        assert set(t.reads) <= written, t.name
        written |= set(t.writes)
    assert "partial-dependence" in {t.name for t in applicable("table")} - {t.name for t in applicable("image")}


def test_run_order_refuses_a_technique_whose_input_nothing_writes():
    orphan = Technique("orphan", "Orphan", lambda *a: {}, lambda *a: {}, "x.html.j2", "global", reads=("lime",))
    with pytest.raises(ValueError, match="orphan"):
        run_order([orphan])


def test_each_step_wrote_what_its_entry_declares(table_run):
    results = table_run["results"]
    for t in run_order(applicable("table")):
        files = results[t.name]["files"]
        assert set(files) <= set(t.writes), t.name
        for key, ref in files.items():
            assert ref["path"] == str(layout.path(table_run["run_dir"], key)), (t.name, key)
        assert isinstance(results[t.name]["checks"], list) and results[t.name]["wall_seconds"] >= 0
