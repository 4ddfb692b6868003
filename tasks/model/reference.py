"""The user's reference models (a CNN for images, an MLP for tables) and their weights file (safetensors + config)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from tasks.run.artifacts import atomic_path
from tasks.run.errors import InputError

METADATA_KEY = "accountability"


@dataclass(frozen=True)
class CNNConfig:
    """Shape of the reference CNN; stored beside its weights so they can be rebuilt."""

    in_channels: int  # 1 for grayscale, 3 for RGB; taken from the data
    num_classes: int  # outputs of the final 1x1 convolution
    widths: tuple[int, ...] = (16, 16, 32, 32, 64, 64, 64)  # channels of the 7 3x3 conv layers
    pool_after: tuple[int, ...] = (1, 3, 6)  # 0-based conv indices followed by a 2x2 max-pool


def build_reference_cnn(config: CNNConfig) -> nn.Sequential:
    """7 conv+batch-norm+ReLU layers, 3 max-pools, a 1x1 conv to classes, global average pool.

    Returns logits; `probabilities` adds the softmax that explanations are computed on.
    Every nonlinearity is its own module so DeepSHAP's rules apply to each one exactly.
    """
    layers: list[nn.Module] = []
    channels = config.in_channels
    for index, width in enumerate(config.widths):
        layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        if index in config.pool_after:
            layers.append(nn.MaxPool2d(2))
        channels = width
    layers += [nn.Conv2d(channels, config.num_classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class MLPConfig:
    """Shape of the reference MLP for tables; stored beside its weights so they can be rebuilt."""

    in_features: int  # feature columns, taken from the data
    num_classes: int  # outputs of the last layer
    hidden: int = 64  # units of the one hidden Dense + ReLU layer, as in the reference material


def build_reference_mlp(config: MLPConfig) -> nn.Sequential:
    """Standardise (a frozen diagonal Linear), Dense `hidden` + ReLU, Dense to classes; returns logits.

    The standardisation is a layer of the model, so the model takes raw feature values and every
    explanation, PDP axis and reason code is in the data's own units.
    """
    standardise = nn.Linear(config.in_features, config.in_features)
    standardise.requires_grad_(False)
    return nn.Sequential(standardise, nn.Linear(config.in_features, config.hidden), nn.ReLU(),
                         nn.Linear(config.hidden, config.num_classes))


def set_standardisation(model: nn.Sequential, inputs: np.ndarray) -> None:
    """Make the MLP's first layer compute (x - mean) / std of the training rows (std 0 -> 1)."""
    mean = inputs.astype(np.float64).mean(0)
    std = inputs.astype(np.float64).std(0)
    std[std == 0] = 1.0
    with torch.no_grad():
        model[0].weight.copy_(torch.from_numpy(np.diag(1.0 / std)))
        model[0].bias.copy_(torch.from_numpy(-mean / std))


ModelConfig = CNNConfig | MLPConfig
ARCHITECTURES = {"cnn": (CNNConfig, build_reference_cnn), "mlp": (MLPConfig, build_reference_mlp)}


def build_model(config: ModelConfig) -> nn.Sequential:
    """The reference model for `config`."""
    return ARCHITECTURES[architecture(config)][1](config)


def architecture(config: ModelConfig) -> str:
    """``cnn`` or ``mlp``: the key in ARCHITECTURES, as recorded in the weights file."""
    return "cnn" if isinstance(config, CNNConfig) else "mlp"


def save_weights(path: Path, model: nn.Module, config: ModelConfig, training: dict) -> Path:
    """Write the weights as safetensors, with the model config and training parameters in its metadata."""
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    # One metadata key: safetensors writes its metadata map in arbitrary order, which would make
    # the file's bytes (and hash) differ between identical runs.
    metadata = {METADATA_KEY: json.dumps({"architecture": architecture(config), "model_config": asdict(config),
                                          "training": training}, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


def load_weights(path: Path) -> tuple[nn.Sequential, ModelConfig, dict]:
    """Rebuild the model from a safetensors file written by `save_weights` (no pickle involved)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        provenance = json.loads(metadata[METADATA_KEY])
        config_fields = provenance["model_config"]
        config_class, build = ARCHITECTURES[provenance.get("architecture", "cnn")]
        config = config_class(**{k: tuple(v) if isinstance(v, list) else v for k, v in config_fields.items()})
        state = load_file(str(path))
    except (SafetensorError, OSError, KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: not a weights file written by accountability: {exc}") from None
    model = build(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise InputError(f"{path}: weights do not fit the model: {first}") from None
    model.eval()
    return model, config, provenance["training"]
