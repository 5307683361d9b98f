"""A model's logits on pair tables and the metrics of them: what training's final
evaluation, ``evaluate``, the audit and the benchmarks score runs with."""

from __future__ import annotations

import keras
import numpy as np

from trainer.data import input_pipeline
from trainer.evaluation import metrics


def predict_logits(model: keras.Model, table: input_pipeline.PairTable, packer,
                   batch_size: int) -> np.ndarray:
    """Logits for every row of ``table``, in order."""
    if len(table) == 0:
        return np.zeros([0], np.float32)
    ds = input_pipeline.make_dataset(table, batch_size, packer=packer, with_labels=False)
    return np.asarray(model.predict(ds, verbose=0), dtype=np.float32).reshape(-1)


def predict_splits(model, tables: dict, packer, batch_size: int) -> dict:
    """Logits for each non-empty evaluation split: ``{"validation": [...], "test": [...]}``."""
    return {name: predict_logits(model, tables[name], packer, batch_size)
            for name in ("validation", "test") if len(tables[name])}


def evaluate_tables(model, tables: dict, packer, batch_size: int,
                    split_logits: dict | None = None) -> dict:
    """metrics.json content: trainer/evaluation/metrics.py on the validation and test splits (scored
    now, or from ``split_logits`` as :func:`predict_splits` returns them)."""
    if split_logits is None:
        split_logits = predict_splits(model, tables, packer, batch_size)
    return {name: metrics.evaluate_predictions(
        tables[name].label, logits, tables[name].group,
        true_probabilities=tables[name].true_probability)
        for name, logits in split_logits.items()}
