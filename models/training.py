"""fit(): the training loop used by the workers, with its records and checkpoints.

The per-batch numerics live in models/engine.py (examples-first layout, fused output gradient,
reused buffers); the maths is the textbook's, so full-batch float64 gd agrees with a loop of the
models.network functions to ~1e-12 (tested).

Definitions used throughout (and by the tests):
- history[i].loss: the cost of epoch i's forward passes; with mini-batches the example-weighted
  mean of the batch costs (each batch cost includes its own l2 term, l2/(2B) sum ||W||^2 with B
  the batch size, and dW gets + l2/B W, exactly as the textbook step on that batch would do);
  with full-batch gd it is the cost before that epoch's update, as the textbook prints it.
- history[i].accuracy: the fraction right in those same forward passes (dropout included, as
  Keras reports it); sigmoid counts AL > 0.5 against Y > 0.5 per output, softmax the argmax;
  None for linear.  val_loss / val_accuracy: one forward pass over the validation set after the
  epoch, no dropout, l2 term included.
- Randomness of epoch e comes from (seed, e) alone (models.backend.device_rng), so resuming
  from a checkpoint needs only the epoch number and reproduces the uninterrupted run exactly.
  Draw order on the CPU: the permutation (mini-batch with shuffle only), then per batch the
  dropout masks, layer 1 first, each ``random((B, n_l)) < keep_prob`` (examples-first).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import stepgraph
from .backend import device_rng, is_numpy, release_memory, select_device, to_host
from .config import TrainConfig
from .engine import Engine, take_rows
from .flat import flatten_params
from .network import initialize_parameters_deep
from .optimizers import make_optimizer

__all__ = ["fit", "FitResult", "EpochRecord", "EpochState", "Checkpoint", "TrainingDiverged", "ValidationLossNotFinite"]

_VAL_CHUNK = 8192  # validation examples per forward pass (bounds memory)


class TrainingDiverged(ArithmeticError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, loss: float, learning_rate: float):
        super().__init__(
            f"Training diverged at epoch {epoch}: the loss is {loss}. Try a lower learning_rate "
            f"(this epoch used {learning_rate:g}), scale the inputs (e.g. preprocess.scale=1/255 for "
            "pixel values), or add l2 regularisation."
        )
        self.epoch = epoch


class ValidationLossNotFinite(TrainingDiverged):
    """The loss on the validation set became NaN or infinite (the training loss did not)."""

    def __init__(self, epoch: int, loss: float, learning_rate: float):
        ArithmeticError.__init__(
            self,
            f"The validation loss is {loss} at epoch {epoch} (the training loss is finite): the network's "
            "outputs overflow on the validation set. Check that the validation set is on the training set's "
            "scale (same units, same preprocessing), try a lower learning_rate (this epoch used "
            f"{learning_rate:g}), scale the targets, or train with dtype 'float64'.",
        )
        self.epoch = epoch


@dataclass
class EpochRecord:
    epoch: int  # 1-based number of completed epochs
    loss: float
    accuracy: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None

    def to_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "loss": self.loss,
            "accuracy": self.accuracy,
            "val_loss": self.val_loss,
            "val_accuracy": self.val_accuracy,
        }


_HISTORY_FIELDS = ("loss", "accuracy", "val_loss", "val_accuracy")


@dataclass
class Checkpoint:
    """Everything needed to continue a run exactly: parameters, optimizer state, epoch, history.

    The RNG state is (seed, epoch): each epoch's generator is derived from them.
    """

    epoch: int
    parameters: dict[str, np.ndarray]
    optimizer_state: dict[str, np.ndarray]
    history: list[EpochRecord]
    seed: int

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat dict of plain arrays (no objects): np.savez it, np.load(allow_pickle=False) it."""
        out: dict[str, np.ndarray] = {
            "epoch": np.array(self.epoch, dtype=np.int64),
            "seed": np.array(self.seed, dtype=np.int64),
        }
        for k, v in self.parameters.items():
            out[f"param.{k}"] = np.asarray(v)
        for k, v in self.optimizer_state.items():
            out[f"opt.{k}"] = np.asarray(v)
        for name in _HISTORY_FIELDS:  # None is stored as NaN
            out[f"history.{name}"] = np.array(
                [np.nan if getattr(r, name) is None else getattr(r, name) for r in self.history], dtype=np.float64
            )
        return out

    @classmethod
    def from_arrays(cls, d) -> Checkpoint:
        try:
            epoch, seed = int(d["epoch"]), int(d["seed"])
            params = {k[len("param.") :]: np.asarray(d[k]) for k in d.keys() if k.startswith("param.")}
            opt = {k[len("opt.") :]: np.asarray(d[k]) for k in d.keys() if k.startswith("opt.")}
            columns = {name: np.asarray(d[f"history.{name}"]) for name in _HISTORY_FIELDS}
        except KeyError as exc:
            raise ValueError(f"Not a dnnq checkpoint: the array {exc.args[0]!r} is missing.") from None

        def value(x):
            return None if math.isnan(x) else float(x)

        history = [
            EpochRecord(i + 1, float(columns["loss"][i]), *(value(columns[n][i]) for n in _HISTORY_FIELDS[1:]))
            for i in range(len(columns["loss"]))
        ]
        return cls(epoch=epoch, parameters=params, optimizer_state=opt, history=history, seed=seed)


@dataclass
class EpochState:
    """What on_epoch receives after each completed epoch."""

    epoch: int  # completed epochs, 1-based
    epochs: int
    record: EpochRecord
    elapsed_s: float
    _make_checkpoint: Callable[[], Checkpoint] = field(repr=False)
    device: str = "cpu"  # what trains: "cpu" or "gpu:N"

    def checkpoint(self) -> Checkpoint:
        """A host copy of the current state (made only when called; call it inside on_epoch)."""
        return self._make_checkpoint()


@dataclass
class FitResult:
    parameters: dict[str, np.ndarray]
    history: list[EpochRecord]
    device: str
    timings: dict[str, float]
    stopped: bool
    epochs_completed: int
    # GPU only: "on: N steps replayed from K captures", or "off: why" (models/stepgraph.py);
    # None where steps are never graphed (CPU, dropout, unshuffled mini-batches)
    step_graph: str | None = None


# ---------------------------------------------------------------------------------------------
# Data preparation: examples-first, compute dtype, targets checked against the output.
# ---------------------------------------------------------------------------------------------
def _prepare(X, Y, cfg: TrainConfig, dtype, role: str):
    """(Xe (m, n_x), Ye (m, n_y)) as C-contiguous host arrays of ``dtype``."""
    n_x, n_y = cfg.layer_dims[0], cfg.layer_dims[-1]
    X = to_host(X)
    if X.ndim != 2 or X.shape[0] != n_x:
        raise ValueError(
            f"{role} X must be features x examples, shape (n_x={n_x}, m). Got {X.shape}; "
            "pass X.T if your array is examples x features."
        )
    m = X.shape[1]
    if m == 0:
        raise ValueError(f"{role} X has no examples.")
    Xe = np.ascontiguousarray(X.T, dtype=dtype)  # (m, n_x); no copy for a transposed examples-first array
    if not np.isfinite(Xe).all():
        raise ValueError(f"{role} X contains NaN or infinite values; clean or impute them first.")
    Y = to_host(Y)
    if cfg.output == "softmax" and (Y.ndim == 1 or Y.shape[0] == 1):
        labels = Y.reshape(-1)
        if labels.shape[0] != m:
            raise ValueError(f"{role} Y has {labels.shape[0]} labels for {m} examples.")
        if (
            not np.all(np.isfinite(labels))
            or np.any(labels != np.round(labels))
            or labels.min() < 0
            or labels.max() >= n_y
        ):
            raise ValueError(
                f"{role} Y must hold integer class labels in [0, {n_y}) for output='softmax' "
                f"with layer_dims[-1]={n_y}. Got values from {labels.min()} to {labels.max()}."
            )
        Ye = np.zeros((m, n_y), dtype=dtype)
        Ye[np.arange(m), labels.astype(np.int64)] = 1  # one-hot, (m, n_y)
        return Xe, Ye
    if Y.ndim == 1 and n_y == 1:
        Y = Y.reshape(1, -1)
    if Y.ndim != 2 or Y.shape != (n_y, m):
        raise ValueError(f"{role} Y must have shape (n_y={n_y}, m={m}) (outputs x examples). Got {Y.shape}.")
    Ye = np.ascontiguousarray(Y.T, dtype=dtype)  # (m, n_y)
    if not np.isfinite(Ye).all():
        raise ValueError(f"{role} Y contains NaN or infinite values.")
    if cfg.output == "sigmoid" and (Ye.min() < 0 or Ye.max() > 1):
        raise ValueError(
            f"{role} Y must be in [0, 1] for output='sigmoid' (binary labels). "
            f"Got values from {Ye.min()} to {Ye.max()}."
        )
    if cfg.output == "softmax" and (Ye.min() < 0 or not np.allclose(Ye.sum(axis=1), 1, atol=1e-3)):
        raise ValueError(
            f"{role} Y for output='softmax' must be one-hot (each example's column sums to 1) "
            "or integer labels of shape (m,)."
        )
    return Xe, Ye


def _params_to_host(params) -> dict[str, np.ndarray]:
    return {k: np.array(to_host(v)) for k, v in params.items()}


def fit(
    X, Y, config: TrainConfig, *, X_val=None, Y_val=None, on_epoch=None, should_stop=None, checkpoint=None
) -> FitResult:
    """Train an L-layer network on X (n_x, m) and Y (n_y, m); see docs/DESIGN.md."""
    t_start = time.perf_counter()
    cfg = config
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"fit needs a TrainConfig as config. Got {type(cfg).__name__}.")
    device = select_device(cfg.device)
    xp = device.xp
    dtype = np.dtype(cfg.dtype)
    Xe_host, Ye_host = _prepare(X, Y, cfg, dtype, "training")
    has_val = X_val is not None or Y_val is not None
    if has_val and (X_val is None or Y_val is None):
        raise ValueError("Pass both X_val and Y_val, or neither.")
    if has_val:
        Xv_host, Yv_host = _prepare(X_val, Y_val, cfg, dtype, "validation")
    m, n_y = Xe_host.shape[0], cfg.layer_dims[-1]
    batch = m if cfg.batch_size is None else min(cfg.batch_size, m)
    full_batch = batch == m
    try:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            return _fit(
                cfg,
                device,
                xp,
                dtype,
                Xe_host,
                Ye_host,
                Xv_host if has_val else None,
                Yv_host if has_val else None,
                m,
                n_y,
                batch,
                full_batch,
                on_epoch,
                should_stop,
                checkpoint,
                t_start,
            )
    finally:
        release_memory(xp)  # give CuPy's pooled blocks back when fit returns


def _fit(
    cfg,
    device,
    xp,
    dtype,
    Xe_host,
    Ye_host,
    Xv_host,
    Yv_host,
    m,
    n_y,
    batch,
    full_batch,
    on_epoch,
    should_stop,
    checkpoint,
    t_start,
):
    # Data moves to the device once.
    Xe, Ye = xp.asarray(Xe_host), xp.asarray(Ye_host)
    Xv = Yv = None
    if Xv_host is not None:
        Xv, Yv = xp.asarray(Xv_host), xp.asarray(Yv_host)
    optimizer = make_optimizer(
        cfg.optimizer, cfg.learning_rate, beta=cfg.beta, beta1=cfg.beta1, beta2=cfg.beta2, epsilon=cfg.epsilon
    )
    history: list[EpochRecord] = []
    start_epoch = 0
    if checkpoint is None:
        params = initialize_parameters_deep(cfg.layer_dims, seed=cfg.seed, init=cfg.init, xp=xp, dtype=cfg.dtype)
    else:
        params = _restore(checkpoint, cfg, xp, dtype, optimizer)
        start_epoch = checkpoint.epoch
        history = list(checkpoint.history[:start_epoch])
    # The parameters live in one flat array (params holds views of it), like the engine's gradients
    # and the optimizer's state, so an optimizer step is one pass per operation over all of them.
    flat_params, layout = flatten_params(xp, params)
    optimizer.bind_flat(flat_params, layout)
    engine = Engine(cfg, device, params, batch)
    evaluator = None if Xv is None else Engine(cfg, device, params, min(_VAL_CHUNK, Xv.shape[0]), training=False)
    # Shuffling gathers rows of the examples-first copy into one batch buffer (a row gather is
    # cheap; X[:, perm] on features-first data is not). Full batch: the order changes nothing.
    shuffle = cfg.shuffle and not full_batch
    xbuf = xp.empty((batch, Xe.shape[1]), dtype=dtype) if shuffle else None
    ybuf = xp.empty((batch, n_y), dtype=dtype) if shuffle else None
    # softmax accuracy compares argmax(Z) with argmax(Y): the labels' argmax is taken once here,
    # not per step (the same values, as argmax of a row does not depend on the batch).
    labels = xp.argmax(Ye, axis=1) if cfg.output == "softmax" else None
    lbuf = xp.empty((batch,), dtype=labels.dtype) if shuffle and labels is not None else None
    v_labels = xp.argmax(Yv, axis=1) if Yv is not None and cfg.output == "softmax" else None
    acc_denominator = m * n_y if cfg.output == "sigmoid" else m
    # the epoch's loss (float64) and right answers, summed on the device in place, step by step
    loss_total = xp.zeros((), dtype=xp.float64)
    correct_total = xp.zeros((), dtype=xp.int64)
    epoch_rng = None  # the epoch's generator, for the step's dropout masks

    def train_step(xb, yb, lb, scale, loss_acc, correct_acc):
        """Forward, output, backward on one batch: gradients (times ``scale``) into engine.flat_grads."""
        acts, ZL = engine.forward(xb, epoch_rng)
        AL, loss_sum, correct = engine.output(ZL, yb, lb)
        if cfg.l2:
            loss_sum = loss_sum + 0.5 * cfg.l2 * engine.l2_sum()  # B * l2/(2B) sum ||W||^2
        engine.backward(acts, AL, yb, grad_factor=1.0 if scale is None else scale)
        loss_acc += loss_sum.astype(xp.float64)  # float64 sum over the epoch
        if correct is not None:
            correct_acc += correct

    # On a GPU, full batches replay one captured step (models/stepgraph.py) when the step has no
    # per-step randomness and reads fixed buffers: the shuffled batch buffers, or the whole set.
    graphed = None
    if not is_numpy(xp) and stepgraph.enabled() and cfg.dropout_keep_prob == 1 and (shuffle or full_batch):
        fixed = (xbuf, ybuf, lbuf) if shuffle else (Xe, Ye, labels)
        graphed = stepgraph.GraphedStep(
            xp,
            lambda scale, loss_acc, correct_acc: train_step(*fixed, scale, loss_acc, correct_acc),
            engine.flat_grads,
            loss_total,
            correct_total,
        )
    timings = {"setup_s": time.perf_counter() - t_start, "train_s": 0.0, "validation_s": 0.0}
    stopped = False

    def make_checkpoint(epoch_done):
        return lambda: Checkpoint(
            epoch=epoch_done,
            parameters=_params_to_host(params),
            optimizer_state=optimizer.state_arrays(),
            history=history[:epoch_done],
            seed=cfg.seed,
        )

    for epoch in range(start_epoch, cfg.epochs):
        t_epoch = time.perf_counter()
        lr = cfg.learning_rate_at(epoch)
        optimizer.learning_rate = lr
        scale = optimizer.prescale()  # None, or the factor update_prescaled_flat wants on the gradients
        epoch_rng = device_rng(xp, cfg.seed, epoch)
        perm = xp.asarray(epoch_rng.permutation(m)) if shuffle else None
        loss_total[...] = 0
        correct_total[...] = 0
        for s in range(0, m, batch):
            e = min(s + batch, m)
            if shuffle:
                xb, yb = xbuf[: e - s], ybuf[: e - s]
                idx = perm[s:e]
                take_rows(xp, Xe, idx, xb, engine.fast)
                take_rows(xp, Ye, idx, yb, engine.fast)
                lb = None
                if labels is not None:
                    lb = lbuf[: e - s]
                    take_rows(xp, labels, idx, lb)
            else:
                xb, yb = Xe[s:e], Ye[s:e]
                lb = None if labels is None else labels[s:e]
            # scale: gd's lr (adam has none), folded into the backward pass; None: update_flat scales
            if graphed is not None and e - s == batch:
                graphed.step(scale)
            else:
                train_step(xb, yb, lb, scale, loss_total, correct_total)
            if scale is not None:
                optimizer.update_prescaled_flat(flat_params, engine.flat_grads)
            else:
                optimizer.update_flat(flat_params, engine.flat_grads)
        loss = float(loss_total) / m  # float(loss) syncs the GPU: once per epoch, on purpose
        if not math.isfinite(loss):
            raise TrainingDiverged(epoch + 1, loss, lr)
        accuracy = None if cfg.output == "linear" else int(correct_total) / acc_denominator
        timings["train_s"] += time.perf_counter() - t_epoch
        record = EpochRecord(epoch + 1, loss, accuracy)
        if Xv is not None:
            t_val = time.perf_counter()
            v_loss, v_correct = evaluator.evaluate(Xv, Yv, v_labels)
            if cfg.l2:
                v_loss = v_loss + 0.5 * cfg.l2 * engine.l2_sum()
            record.val_loss = float(v_loss) / Xv.shape[0]  # syncs the GPU
            if not math.isfinite(record.val_loss):  # fail now: never an Infinity in the history or a "succeeded"
                raise ValidationLossNotFinite(epoch + 1, record.val_loss, lr)
            if v_correct is not None:
                record.val_accuracy = int(v_correct) / (Xv.shape[0] * (n_y if cfg.output == "sigmoid" else 1))
            timings["validation_s"] += time.perf_counter() - t_val
        history.append(record)
        if on_epoch is not None:
            on_epoch(
                EpochState(
                    epoch + 1,
                    cfg.epochs,
                    record,
                    time.perf_counter() - t_start,
                    make_checkpoint(epoch + 1),
                    device.name,
                )
            )
        if should_stop is not None and should_stop() and epoch + 1 < cfg.epochs:
            stopped = True
            break
    done = len(history)
    trained = done - start_epoch
    timings["epoch_mean_s"] = timings["train_s"] / trained if trained else 0.0
    timings["total_s"] = time.perf_counter() - t_start
    step_graph = None
    if graphed is not None:
        graphed.close()
        step_graph = graphed.describe()
    return FitResult(
        parameters=_params_to_host(params),
        history=history,
        device=device.name,
        timings=timings,
        stopped=stopped,
        epochs_completed=done,
        step_graph=step_graph,
    )


def _restore(ckpt: Checkpoint, cfg: TrainConfig, xp, dtype, optimizer) -> dict:
    if ckpt.seed != cfg.seed:
        raise ValueError(
            f"The checkpoint was made with seed={ckpt.seed} but the config has seed={cfg.seed}; "
            "resume with the same config."
        )
    if not 0 <= ckpt.epoch <= len(ckpt.history) or ckpt.epoch > cfg.epochs:
        raise ValueError(
            f"The checkpoint is at epoch {ckpt.epoch}, which does not fit epochs={cfg.epochs} "
            f"and its {len(ckpt.history)} history entries."
        )
    dims, params = cfg.layer_dims, {}
    for l in range(1, len(dims)):
        for key, shape in ((f"W{l}", (dims[l], dims[l - 1])), (f"b{l}", (dims[l], 1))):
            if key not in ckpt.parameters or tuple(ckpt.parameters[key].shape) != shape:
                got = None if key not in ckpt.parameters else tuple(ckpt.parameters[key].shape)
                raise ValueError(f"The checkpoint's {key} has shape {got}, but layer_dims={dims} needs {shape}.")
            params[key] = xp.asarray(np.array(ckpt.parameters[key], dtype=dtype))
    if len(ckpt.parameters) != len(params):
        raise ValueError(
            f"The checkpoint has {len(ckpt.parameters) // 2} layers but layer_dims={dims} has {len(dims) - 1}."
        )
    optimizer.load_state_arrays(ckpt.optimizer_state, xp, params)
    return params
