"""The most a job's artifacts may take in the store: what its submit reserves against its tenant's quota
(DNNQ_MAX_ARTIFACT_BYTES_PER_TENANT).

A job's files live under ``jobs/{id}/``: weights.npz, weights.safetensors, weights.onnx (float32) and
model.json (workers/artifacts.py), checkpoint.npz while it trains (parameters, optimizer state, history
columns), and history.jsonl.gz once it has ended with a long history (workers/history_store.py).
max_artifact_bytes counts every one of them at its largest, all at once, from the job's layer sizes,
dtype, optimizer, epochs and its dataset's classes.

Why a reservation and not a count of the bytes written: create_job.lua adds a job's reservation to its
tenant's counter (keys.tenant_artifact_bytes) in the step that writes its record, and delete_job.lua
takes it away in the step that deletes the record, so the counter is the sum over the tenant's records
and cannot drift: no worker counts anything, and a worker killed between a write and a count, a retry
that writes its files again, or a checkpoint replaced, changes nothing. A deleted job's files may stay
until the trash is emptied (workers/trash.py), by then no longer counted.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from dnnq.models import OPTIMIZERS, TrainConfig

__all__ = ["HISTORY_ENTRY_BYTES", "max_artifact_bytes"]

# An epoch's history line at its longest: five keys, the epoch number, four floats of up to 24 characters
# (a double's repr, or null, NaN, Infinity). Gzip adds a few bytes per block to what it cannot compress.
HISTORY_ENTRY_BYTES = 256
# What one array adds besides its values in each file that holds it: its .npy header and zip entries
# (zip64 ones past 4 GiB), its safetensors header entry, its ONNX initializer's name and dims and nodes.
ARRAY_BYTES = 512
# Each file's own part (zip directory, safetensors and ONNX metadata, the ONNX graph's label nodes,
# model.json's text besides its classes), and its last block on a local disk.
FILE_BYTES = 8 * 1024
JOB_FILES = 6  # weights.npz, weights.safetensors, weights.onnx, model.json, checkpoint.npz, history.jsonl.gz
# Copies of the classes a job's files hold (safetensors metadata, ONNX metadata and class-name tensor,
# model.json), each at most twice its JSON text (JSON within JSON escapes it again; indented in model.json).
CLASS_TEXT_COPIES = 16
CHECKPOINT_SCALARS = 3  # epoch, seed, the optimizer's step count
HISTORY_COLUMNS = 4  # a checkpoint's history: loss, accuracy, val_loss, val_accuracy (float64 each)


def max_artifact_bytes(cfg: TrainConfig, classes: list[Any] | None) -> int:
    """The largest the job's files may be, together: weights in every format, a checkpoint, its history."""
    dims = cfg.layer_dims
    n_params = cfg.parameter_count()
    n_arrays = 2 * (len(dims) - 1)  # W and b per layer
    item = np.dtype(cfg.dtype).itemsize
    slots = len(OPTIMIZERS[cfg.optimizer].slots)  # optimizer state arrays per parameter
    weights = 2 * n_params * item + n_params * 4 + 3 * n_arrays * ARRAY_BYTES  # npz, safetensors, ONNX
    checkpoint_arrays = n_arrays * (1 + slots) + CHECKPOINT_SCALARS + HISTORY_COLUMNS
    checkpoint = n_params * item * (1 + slots) + cfg.epochs * HISTORY_COLUMNS * 8 + checkpoint_arrays * ARRAY_BYTES
    history = cfg.epochs * HISTORY_ENTRY_BYTES
    class_text = CLASS_TEXT_COPIES * len(json.dumps(classes)) if classes else 0
    return weights + checkpoint + history + class_text + JOB_FILES * FILE_BYTES
