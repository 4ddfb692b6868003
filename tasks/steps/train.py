"""The train step: fit the reference CNN (images) or MLP (tables) on logits, record per-epoch metrics,
save safetensors weights.

Metrics file (``training/metrics.parquet``), one row per epoch and split:
epoch, split (train | validation), loss, accuracy, precision_macro, recall_macro, f1_macro.
Per-class file (``training/metrics_per_class.parquet``), one row per epoch, split and class:
epoch, split, class_index, class_name, precision, recall, f1, support.
Training-split figures are those of the epoch's own passes (model in training mode).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import precision_recall_fscore_support
from torch import nn

from tasks.model.predict import predict_logits
from tasks.model.run_model import write_trained_record
from tasks.model.reference import CNNConfig, MLPConfig, ModelConfig, build_model, save_weights, set_standardisation
from tasks.run import layout
from tasks.run.artifacts import sha256_file
from tasks.run.formats import Split, file_ref, read_split, write_frame
from tasks.run.progress import progress_bar

LEARNING_RATE = 1e-3


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global generator and return a dedicated one for data shuffling."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    return torch.Generator().manual_seed(seed)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict:
    """Accuracy, macro and per-class precision/recall/F1 (scikit-learn, zero_division=0)."""
    labels = list(range(n_classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    return {
        "accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else 0.0,
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "f1_macro": float(f1.mean()),
        "per_class": {"precision": precision, "recall": recall, "f1": f1, "support": support},
    }


def reference_model(train: Split) -> tuple[nn.Sequential, ModelConfig]:
    """The untrained reference model for a split: the CNN for images, the MLP (standardising) for tables."""
    n_classes = len(train.class_names)
    if train.modality == "table":
        config = MLPConfig(in_features=train.inputs.shape[1], num_classes=n_classes)
        model = build_model(config)
        set_standardisation(model, train.inputs)
        return model, config
    config = CNNConfig(in_channels=train.inputs.shape[1], num_classes=n_classes)
    return build_model(config), config


def train_model(train_path: Path, validation_path: Path, run_dir: Path, epochs: int, batch_size: int, seed: int) -> dict:
    """Train the reference model with Adam (lr 1e-3) on cross-entropy of logits; write weights and metrics."""
    run_dir = Path(run_dir)
    train, val = read_split(Path(train_path)), read_split(Path(validation_path))
    n_classes = len(train.class_names)
    generator = seed_everything(seed)
    model, config = reference_model(train)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE)
    loss_fn = nn.CrossEntropyLoss()  # takes logits; the softmax is only added for explanation
    x_train, y_train = torch.from_numpy(train.inputs), torch.from_numpy(train.labels)
    n_batches = -(-len(x_train) // batch_size)

    rows, class_rows = [], []

    def record(epoch: int, split: str, loss: float, y_true: np.ndarray, y_pred: np.ndarray) -> dict:
        metrics = classification_metrics(y_true, y_pred, n_classes)
        per_class = metrics.pop("per_class")
        rows.append({"epoch": epoch, "split": split, "loss": loss, **metrics})
        for k, name in enumerate(train.class_names):
            class_rows.append({"epoch": epoch, "split": split, "class_index": k, "class_name": name,
                               **{key: float(per_class[key][k]) for key in ("precision", "recall", "f1")},
                               "support": int(per_class["support"][k])})
        return metrics

    with progress_bar("train", total=epochs * n_batches) as advance:
        for epoch in range(1, epochs + 1):
            model.train()
            order = torch.randperm(len(x_train), generator=generator)
            total_loss, predictions = 0.0, torch.empty(len(x_train), dtype=torch.long)
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                logits = model(x_train[idx])
                loss = loss_fn(logits, y_train[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += loss.item() * len(idx)
                predictions[idx] = logits.argmax(1).detach()
                advance(status=f"epoch {epoch}/{epochs} loss {loss.item():.3f}")
            record(epoch, "train", total_loss / len(x_train), train.labels, predictions.numpy())
            val_logits = predict_logits(model, val.inputs)
            val_loss = float(loss_fn(val_logits, torch.from_numpy(val.labels)))
            val_metrics = record(epoch, "validation", val_loss, val.labels, val_logits.argmax(1).numpy())
            advance(0, status=f"epoch {epoch}/{epochs} val acc {val_metrics['accuracy']:.3f}")

    training = {"epochs": epochs, "batch_size": batch_size, "seed": seed, "optimizer": "Adam",
                "learning_rate": LEARNING_RATE, "loss": "CrossEntropyLoss on logits",
                "train_sha256": sha256_file(Path(train_path))}
    weights = save_weights(layout.path(run_dir, "weights"), model, config, training)
    write_trained_record(run_dir, list(train.inputs.shape[1:]), n_classes)
    files = {"weights": file_ref(weights), "model": file_ref(layout.path(run_dir, "model")),
             "metrics": write_frame(layout.path(run_dir, "metrics"), pd.DataFrame(rows)),
             "metrics_per_class": write_frame(layout.path(run_dir, "metrics_per_class"), pd.DataFrame(class_rows))}
    final = {k: v for k, v in rows[-1].items() if k not in ("epoch", "split")}
    return {"files": files, "model_config": asdict(config), "final_validation": final}
