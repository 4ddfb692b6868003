import json
import subprocess
import sys

import pytest
from PIL import Image
from pypdf import PdfReader

from tasks.report.own_image import explain_image
from tasks.run.errors import InputError


@pytest.fixture(scope="module")
def finished_run(image_run):
    root, result = image_run
    return root, result["run_dir"]


def test_own_image_gets_a_prediction_plot_and_one_page_pdf(finished_run, tmp_path):
    root, run_dir = finished_run
    photo = tmp_path / "my photo.jpg"
    Image.open(root / "light" / "0.png").resize((300, 200)).save(photo)  # any size, another format
    result = explain_image(photo, run_dir, tmp_path / "out")
    assert result["predicted"] in {"dark", "mid", "light"} and 0 < result["probability"] <= 1
    assert result["additivity_error"] < 1e-5
    assert Image.open(result["png"]).format == "PNG"
    reader = PdfReader(result["pdf"])
    assert len(reader.pages) == 1
    text = reader.pages[0].extract_text()
    assert "my photo.jpg" in text and f"predicts {result['predicted']}" in " ".join(text.split())
    record = json.loads((tmp_path / "out").glob("*/explanation.json").__next__().read_text())
    assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_a_file_that_is_not_an_image_is_refused(finished_run, tmp_path):
    _, run_dir = finished_run
    fake = tmp_path / "notes.png"
    fake.write_text("not an image")
    with pytest.raises(InputError, match="cannot read image .*notes.png"):
        explain_image(fake, run_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_image_whose_name_is_not_utf8_is_refused_before_anything_is_written(finished_run, tmp_path):
    import os

    root, run_dir = finished_run
    photo = tmp_path / os.fsdecode(b"caf\xe9.png")  # a Latin-1 name, as a camera or an old share writes it
    Image.open(root / "light" / "0.png").save(photo)
    with pytest.raises(InputError, match=r"image b'.*caf\\xe9.png' is not valid UTF-8"):
        explain_image(photo, run_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_directory_that_is_not_a_run_is_refused(finished_run, tmp_path):
    root, _ = finished_run
    with pytest.raises(InputError, match="not a finished run directory: model/model.json is missing"):
        explain_image(root / "dark" / "0.png", tmp_path, tmp_path / "out")


def test_a_run_that_fails_verification_or_an_out_inside_a_run_is_refused(finished_run, tmp_path):
    import shutil

    root, run_dir = finished_run
    image = root / "dark" / "0.png"
    with pytest.raises(InputError, match="is inside the run directory"):
        explain_image(image, run_dir, f"{run_dir}/figures/mine")
    copy = shutil.copytree(run_dir, tmp_path / "copy")
    (copy / "data" / "extra.txt").write_text("added after the run")
    with pytest.raises(InputError, match="fails verification .*not in the manifest: data/extra.txt"):
        explain_image(image, copy, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_prints_prediction_and_paths(finished_run, tmp_path):
    root, run_dir = finished_run
    result = subprocess.run([sys.executable, "-m", "flows.cli", "explain-image", str(root / "dark" / "1.png"),
                             "--run", run_dir, "--out", str(tmp_path / "out")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("predicted: ") and "report: " in result.stdout
    bad = subprocess.run([sys.executable, "-m", "flows.cli", "explain-image", str(tmp_path / "missing.png"),
                          "--run", run_dir], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "does not exist" in bad.stderr


def test_a_table_models_run_is_refused(finished_run, table_run, tmp_path):
    root, _ = finished_run
    with pytest.raises(InputError, match="is a run on table data"):
        explain_image(root / "dark" / "0.png", table_run["run_dir"], tmp_path / "explanations")
