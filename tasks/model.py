"""The reference CNN of the user's material, and its weights file (safetensors + config)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from tasks.artifacts import atomic_path
from tasks.errors import InputError

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


def probabilities(model: nn.Module) -> nn.Sequential:
    """The model followed by a softmax over classes: what the report explains."""
    return nn.Sequential(model, nn.Softmax(dim=1))


def save_weights(path: Path, model: nn.Module, config: CNNConfig, training: dict) -> Path:
    """Write the weights as safetensors, with the model config and training parameters in its metadata."""
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    # One metadata key: safetensors writes its metadata map in arbitrary order, which would make
    # the file's bytes (and hash) differ between identical runs.
    metadata = {METADATA_KEY: json.dumps({"model_config": asdict(config), "training": training}, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


def load_weights(path: Path) -> tuple[nn.Sequential, CNNConfig, dict]:
    """Rebuild the model from a safetensors file written by `save_weights` (no pickle involved)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        provenance = json.loads(metadata[METADATA_KEY])
        config_fields = provenance["model_config"]
        config = CNNConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config_fields.items()})
        state = load_file(str(path))
    except (SafetensorError, OSError, KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: not a weights file written by accountability: {exc}") from None
    model = build_reference_cnn(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise InputError(f"{path}: weights do not fit the model: {first}") from None
    model.eval()
    return model, config, provenance["training"]
