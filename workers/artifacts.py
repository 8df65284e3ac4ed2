"""Serialising trained networks and checkpoints: the only writer of jobs/{id}/* files.

weights.npz and weights.safetensors hold the same arrays (W1, b1, ..., WL, bL; `b` of shape
(n_l, 1)); model.json says how to use them; weights.onnx is added when workers/onnx_export.py is
present. The safetensors and ONNX files describe themselves too: export_metadata's string fields
(layer sizes, activations, output, input scale, classes, dnnq version, dtype) are the safetensors
`__metadata__` and the ONNX `metadata_props`, so either file is usable without model.json.
Checkpoints are flat np.savez files loaded with allow_pickle=False.
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from dnnq.workers.artifact_store import ArtifactStore

if TYPE_CHECKING:
    from dnnq.models import Checkpoint

__all__ = [
    "checkpoint_key",
    "delete_checkpoint",
    "export_metadata",
    "load_checkpoint",
    "model_json",
    "save_checkpoint",
    "save_trained",
    "weights_npz_bytes",
    "weights_safetensors_bytes",
]


def _ordered(params: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """W1, b1, W2, b2, ... in layer order (not lexical: W10 after W9)."""

    def layer_key(name: str) -> tuple[int, str]:
        return int(name[1:]) if name[1:].isdigit() else 1 << 30, name[0]

    return [(k, np.ascontiguousarray(params[k])) for k in sorted(params, key=layer_key)]


def weights_npz_bytes(params: dict[str, np.ndarray]) -> bytes:
    """The arrays as an .npz file, in layer order."""
    arrays: dict[str, Any] = dict(_ordered(params))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def weights_safetensors_bytes(params: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """The arrays as a .safetensors file, in layer order, with string `metadata`."""
    from safetensors.numpy import save

    return save(dict(_ordered(params)), metadata=metadata)


def _layer_sizes(params: dict[str, np.ndarray]) -> list[int]:
    n_layers = sum(1 for k in params if k.startswith("W"))
    return [int(params["W1"].shape[1])] + [int(params[f"W{l}"].shape[0]) for l in range(1, n_layers + 1)]


def export_metadata(params: dict[str, np.ndarray], model_info: dict[str, Any]) -> dict[str, str]:
    """The string fields a weights file carries about its network (safetensors `__metadata__`, ONNX
    `metadata_props`): lists, numbers and null as JSON text, names as they are. `dtype` is the
    arrays' as trained (the ONNX graph's are float32: it says so itself)."""
    sizes = _layer_sizes(params)
    hidden, output = model_info["hidden_activation"], model_info["output"]
    return {
        "format": "dnnq-model/1",
        "layer_sizes": json.dumps(sizes),
        "activations": json.dumps([hidden] * (len(sizes) - 2) + [output]),
        "hidden_activation": hidden,
        "output": output,
        "input_scale": json.dumps(model_info.get("input_scale")),
        "preprocessing": "X * input_scale before the first layer (input_scale null: X as it is)",
        "classes": json.dumps(model_info.get("classes")),
        "label_kind": json.dumps(model_info.get("label_kind")),
        "dnnq_version": _dist_version(),
        "dtype": str(params["W1"].dtype),
    }


def model_json(
    *,
    params: dict[str, np.ndarray],
    hidden_activation: str,
    output: str,
    input_scale: float | None,
    classes: list[Any] | None,
    metrics: dict[str, Any] | None,
    job_id: str | None = None,
    dataset_id: str | None = None,
    label_kind: str | None = None,
) -> bytes:
    """How to use the weights: a = act(W @ a + b) per layer on (n_features, m) inputs multiplied by
    input_scale (the spec's preprocess.scale, written as model.json's preprocessing.scale)."""

    layer_sizes = _layer_sizes(params)
    n_layers = len(layer_sizes) - 1
    doc: dict[str, Any] = {
        "format": "dnnq-model/1",
        "job_id": job_id,
        "dataset_id": dataset_id,
        "layer_sizes": layer_sizes,
        "activations": [hidden_activation] * (n_layers - 1) + [output],
        "hidden_activation": hidden_activation,
        "output": output,
        "label_kind": label_kind,
        "layout": "features x examples: A_l = g_l(W_l @ A_{l-1} + b_l), W_l (n_l, n_{l-1}), b_l (n_l, 1)",
        "preprocessing": {"scale": input_scale, "note": "X * scale before the first layer" if input_scale else None},
        "classes": classes,
        "metrics": metrics,
        "dtype": str(params["W1"].dtype),
        "versions": {"dnnq": _dist_version(), "numpy": np.__version__},
    }
    return json.dumps(doc, indent=2, sort_keys=True).encode()


@functools.lru_cache(maxsize=1)
def _dist_version() -> str:
    """The installed dnnq's version, read once per process: importlib.metadata parses the package's
    METADATA file on every call, a cost a tiny job notices (docs/perf.md, "Worker")."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dnnq")
    except PackageNotFoundError:
        return "unknown"


def save_trained(
    store: ArtifactStore, job_id: str, params: dict[str, np.ndarray], model_info: dict[str, Any]
) -> dict[str, str]:
    """Write weights.npz, weights.safetensors, model.json (and weights.onnx when available).

    model_info: hidden_activation, output, input_scale, classes, metrics, dataset_id, label_kind.
    Returns {"npz": sha256, "safetensors": sha256, "model_json": sha256[, "onnx": sha256]}.
    """
    params = {k: np.asarray(v) for k, v in params.items()}
    base = f"jobs/{job_id}"
    metadata = export_metadata(params, model_info)
    shas = {
        "npz": store.put(f"{base}/weights.npz", weights_npz_bytes(params)),
        "safetensors": store.put(f"{base}/weights.safetensors", weights_safetensors_bytes(params, metadata)),
    }
    onnx = _onnx_exporter()
    if onnx is not None:
        data = onnx(
            params,
            model_info["hidden_activation"],
            model_info["output"],
            model_info.get("input_scale"),
            classes=_class_names_for_graph(params, model_info),
            metadata={**metadata, "dtype": "float32"},
        )
        shas["onnx"] = store.put(f"{base}/weights.onnx", data)
    shas["model_json"] = store.put(
        f"{base}/model.json",
        model_json(
            params=params,
            hidden_activation=model_info["hidden_activation"],
            output=model_info["output"],
            input_scale=model_info.get("input_scale"),
            classes=model_info.get("classes"),
            metrics=model_info.get("metrics"),
            job_id=job_id,
            dataset_id=model_info.get("dataset_id"),
            label_kind=model_info.get("label_kind"),
        ),
    )
    return shas


def _class_names_for_graph(params: dict[str, np.ndarray], model_info: dict[str, Any]) -> list[Any] | None:
    """The classes when they name the output's labels one for one (softmax: one per unit; one sigmoid
    unit: two), else None: the graph then outputs indices only (the metadata still lists them)."""
    classes = model_info.get("classes")
    n_out = _layer_sizes(params)[-1]
    fits = {"softmax": n_out, "sigmoid": 2 if n_out == 1 else -1}.get(model_info["output"], -1)
    return list(classes) if classes and len(classes) == fits else None


def _onnx_exporter() -> Callable[..., bytes] | None:
    """workers.onnx_export.onnx_bytes if that module is present (helper F's), else None."""
    try:
        from dnnq.workers.onnx_export import onnx_bytes
    except ImportError as exc:
        if exc.name != "dnnq.workers.onnx_export":
            raise
        return None
    return onnx_bytes


def checkpoint_key(job_id: str) -> str:
    """The artifact-store key of job_id's checkpoint."""
    return f"jobs/{job_id}/checkpoint.npz"


def save_checkpoint(store: ArtifactStore, job_id: str, ckpt: Checkpoint) -> str:
    """Atomic: a crash mid-write leaves the previous checkpoint in place."""
    arrays: dict[str, Any] = ckpt.to_arrays()
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return store.put(checkpoint_key(job_id), buf.getvalue())


def load_checkpoint(store: ArtifactStore, job_id: str) -> Checkpoint | None:
    """The job's last Checkpoint, or None when it has none."""
    from dnnq.models import Checkpoint

    try:
        data = store.get(checkpoint_key(job_id))
    except KeyError:
        return None
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return Checkpoint.from_arrays({k: npz[k] for k in npz.files})


def delete_checkpoint(store: ArtifactStore, job_id: str) -> None:
    """Remove job_id's checkpoint (nothing when it has none)."""
    store.delete(checkpoint_key(job_id))
