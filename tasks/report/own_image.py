"""Explain a user's own image file with a finished run's model: prediction, SHAP plot, one-page PDF."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from tasks.data.images import read_image, resize_images
from tasks.deepshap.stage import ENGINES, additivity_errors, stage_engine
from tasks.model.run_model import load_run_model
from tasks.report.figures import shap_image_plot, short_labels
from tasks.report.render import render_pdf
from tasks.run import layout
from tasks.run.artifacts import sha256_file, write_json_atomic
from tasks.run.errors import InputError, require_utf8, user_path
from tasks.run.verify import verify_run
from tasks.run.formats import background_images, read_split


def explain_image(image_path: Path, run_dir: Path, out_dir: Path) -> dict:
    """Predict `image_path` with the model of `run_dir` and explain it against that run's background."""
    image_path, run_dir = user_path(image_path), user_path(run_dir)
    require_utf8(str(image_path), "image")  # its name reaches the PDF: refused before anything is written
    if not image_path.is_file():
        raise InputError(f"image {image_path} does not exist or is not a file")
    record, train_path = layout.path(run_dir, "model"), layout.path(run_dir, "train")
    background_path = layout.path(run_dir, "background")
    for needed in (record, train_path, background_path):
        if not needed.is_file():
            raise InputError(f"{run_dir} is not a finished run directory: {needed.relative_to(run_dir)} is missing")
    problems = verify_run(run_dir)  # explain only with the model and background the run recorded
    if problems:
        raise InputError(f"{run_dir} fails verification ({problems[0]}; {len(problems)} difference(s) in all): "
                         "explain with an intact run")
    out_dir = user_path(out_dir)
    inside = next((d for d in (out_dir, *out_dir.parents) if layout.path(d, "manifest").is_file()), None)
    if inside is not None:
        raise InputError(f"--out {out_dir} is inside the run directory {inside}: writing there would change the "
                         "run (it would fail verification); choose a directory outside it")

    train = read_split(train_path)
    if train.modality != "image":
        raise InputError(f"{run_dir} is a run on table data; explain-image needs a run on image data")
    model = load_run_model(record)
    shape = train.inputs.shape[1:]
    image = read_image(image_path, "L" if shape[0] == 1 else "RGB")  # (C, 32, 32) in [0, 1], or InputError
    image = resize_images(torch.from_numpy(image[None]), tuple(shape[1:])).clamp(0, 1)[0].numpy()  # the model's size
    background = background_images(background_path)

    probs = model.predict_proba(image[None])[0]
    expected = model.predict_proba(background).mean(0)
    engine = stage_engine(model, "fast")
    values = ENGINES[engine](model, torch.from_numpy(background))(torch.from_numpy(image[None]))[0]  # (K, C, H, W)
    additivity = float(additivity_errors(values[None], probs[None], expected)[0])

    names = train.class_names
    predicted = int(probs.argmax())
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in image_path.stem)[:60] or "image"
    target = out_dir / f"{stem}-{sha256_file(image_path)[:8]}"
    short = short_labels(names, 12)
    titles = [f"{label} {probs[k]:.2f}" for k, label in enumerate(short)]
    figure = shap_image_plot(image, values, titles, target / "shap.png", f"pred {short[predicted]}")
    ranked = np.argsort(-probs)[:3]
    context = {
        "image": {"name": image_path.name, "sha256": sha256_file(image_path)},
        "run": {"id": run_dir.name, "weights_sha256": model.record["sha256"], "background": len(background),
                "engine": engine},
        "predicted": names[predicted], "probability": float(probs[predicted]),
        "top": [{"name": names[k], "probability": float(probs[k])} for k in ranked],
        "additivity": additivity, "figure": figure.relative_to(target).as_posix(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    pdf = render_pdf("own_image.html.j2", context, target, target / "explanation.pdf")
    write_json_atomic(target / "explanation.json", {**context, "probabilities": dict(zip(names, probs.tolist()))})
    return {"predicted": names[predicted], "probability": float(probs[predicted]), "png": str(figure),
            "pdf": str(pdf), "additivity_error": additivity}
