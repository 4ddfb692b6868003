"""The model seen from outside: logits, class probabilities, and the softmax model that explanations use."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def probabilities(model: nn.Module) -> nn.Sequential:
    """The model followed by a softmax over classes: what the report explains."""
    return nn.Sequential(model, nn.Softmax(dim=1))


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """Logits for (n, C, H, W) images in evaluation mode."""
    model.eval()
    chunks = [model(torch.from_numpy(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    return torch.cat(chunks) if chunks else torch.empty(0)


def predict_proba(model: nn.Module, inputs: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Class probabilities (n, K), float64, for inputs (n, *input_shape): the model-agnostic methods' view."""
    logits = predict_logits(model, np.ascontiguousarray(inputs, dtype=np.float32), batch_size)
    return torch.softmax(logits.double(), dim=1).numpy()
