"""Explain a user's own image file with a finished run's model: prediction, SHAP plot, one-page PDF."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from tasks.data.images import read_image
from tasks.deepshap.engine import DeepShapEngine
from tasks.deepshap.stage import additivity_errors
from tasks.model.predict import probabilities
from tasks.model.reference import CNNConfig, load_weights
from tasks.report.figures import shap_image_plot
from tasks.report.render import render_pdf
from tasks.run import layout
from tasks.run.artifacts import sha256_file, write_json_atomic
from tasks.run.errors import InputError
from tasks.run.formats import background_images, read_split


def explain_image(image_path: Path, run_dir: Path, out_dir: Path) -> dict:
    """Predict `image_path` with the model of `run_dir` and explain it against that run's background."""
    image_path, run_dir = Path(image_path).expanduser().resolve(), Path(run_dir).expanduser().resolve()
    if not image_path.is_file():
        raise InputError(f"image {image_path} does not exist or is not a file")
    weights, train_path = layout.path(run_dir, "weights"), layout.path(run_dir, "train")
    background_path = layout.path(run_dir, "background")
    for needed in (weights, train_path, background_path):
        if not needed.is_file():
            raise InputError(f"{run_dir} is not a finished run directory: {needed.relative_to(run_dir)} is missing")

    model, config, _ = load_weights(weights)
    if not isinstance(config, CNNConfig):
        raise InputError(f"{run_dir} holds a table model (reference MLP); explain-image needs a run on image data")
    mode = "L" if config.in_channels == 1 else "RGB"
    image = read_image(image_path, mode)  # (C, 32, 32) in [0, 1], or InputError naming the file
    train = read_split(train_path)
    background = background_images(background_path)
    if image.shape != train.inputs.shape[1:]:
        raise InputError(f"image {image_path} became {image.shape}; the model takes {train.inputs.shape[1:]}")

    prob_model = probabilities(model).eval()
    x = torch.from_numpy(image[None])
    with torch.no_grad():
        probs = prob_model(x)[0].numpy()
    engine = DeepShapEngine(prob_model, torch.from_numpy(background))
    values = engine.shap_values(x)[0]  # (K, C, H, W)
    additivity = float(additivity_errors(values[None], probs[None], engine.expected_value.numpy())[0])

    names = train.class_names
    predicted = int(probs.argmax())
    out_dir = Path(out_dir).expanduser().resolve()
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in image_path.stem)[:60] or "image"
    target = out_dir / f"{stem}-{sha256_file(image_path)[:8]}"
    titles = [f"{name[:12]} {probs[k]:.2f}" for k, name in enumerate(names)]
    figure = shap_image_plot(image, values, titles, target / "shap.png", f"pred {names[predicted][:12]}")
    ranked = np.argsort(-probs)[:3]
    context = {
        "image": {"name": image_path.name, "sha256": sha256_file(image_path)},
        "run": {"id": run_dir.name, "weights_sha256": sha256_file(weights), "background": len(background)},
        "predicted": names[predicted], "probability": float(probs[predicted]),
        "top": [{"name": names[k], "probability": float(probs[k])} for k in ranked],
        "additivity": additivity, "figure": figure.relative_to(target).as_posix(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    pdf = render_pdf("own_image.html.j2", context, target, target / "explanation.pdf")
    write_json_atomic(target / "explanation.json", {**context, "probabilities": dict(zip(names, probs.tolist()))})
    return {"predicted": names[predicted], "probability": float(probs[predicted]), "png": str(figure),
            "pdf": str(pdf), "additivity_error": additivity}
