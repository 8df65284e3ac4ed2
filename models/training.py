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

import contextlib
import functools
import math
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import stepgraph
from .backend import (
    DEVICE_RNG,
    Array,
    Device,
    device_rng,
    is_numpy,
    release_memory,
    select_device,
    synchronize,
    to_host,
)
from .config import TrainConfig, chunk_rows, validation_row_bytes
from .data import examples_first
from .engine import Engine, take_rows
from .flat import flatten_params
from .gram import FitPath, GramLayer, GramPlan, SharedGram, plan
from .network import initialize_parameters_deep
from .optimizers import Optimizer, make_optimizer
from .records import Checkpoint, EpochRecord, EpochState, FitResult, TrainingDiverged, ValidationLossNotFinite

__all__ = ["fit", "FitResult", "EpochRecord", "EpochState", "Checkpoint", "TrainingDiverged", "ValidationLossNotFinite"]

_VAL_CHUNK = 8192  # validation examples per forward pass at most (fewer for wide layers: _validation_chunk)


def fit(
    X: Any,
    Y: Any,
    config: TrainConfig,
    *,
    X_val: Any = None,
    Y_val: Any = None,
    on_epoch: Callable[[EpochState], object] | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint: Checkpoint | None = None,
    path: FitPath = "auto",
    gram_cache: SharedGram | None = None,
) -> FitResult:
    """Train an L-layer network on X (n_x, m) and Y (n_y, m); see docs/DESIGN.md.

    ``path``: "auto" trains layer 1 on the Gram path (models/gram.py) where that is exact in exact
    arithmetic, cheaper and within the memory estimate; "textbook" never; "gram" wherever it is
    exact. ``result.path`` says which ran. ``gram_cache``: the data's Gram blocks kept across the
    fits of a sweep pack (models.gram.SharedGram): reused where this fit's data is the same."""
    t_start = time.perf_counter()
    cfg = config
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"fit needs a TrainConfig as config. Got {type(cfg).__name__}.")
    device = select_device(cfg.device)
    dtype = np.dtype(cfg.dtype)
    train = examples_first(X, Y, cfg, dtype, "training")
    if (X_val is None) != (Y_val is None):
        raise ValueError("Pass both X_val and Y_val, or neither.")
    val = None if X_val is None else examples_first(X_val, Y_val, cfg, dtype, "validation")
    loop: _TrainingLoop | None = None
    try:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            loop = _TrainingLoop.start(
                cfg, device, train=train, val=val, checkpoint=checkpoint, t_start=t_start, path=path, shared=gram_cache
            )
            stopped = False
            for epoch in range(loop.start_epoch, cfg.epochs):
                record = loop.run_epoch(epoch)
                if on_epoch is not None:
                    elapsed = time.perf_counter() - t_start
                    make = functools.partial(loop.checkpoint, epoch + 1)
                    on_epoch(EpochState(epoch + 1, cfg.epochs, record, elapsed, make, device.name))
                if should_stop is not None and should_stop() and epoch + 1 < cfg.epochs:
                    stopped = True
                    break
            return loop.result(stopped)
    except BaseException as exc:
        # The traceback keeps every frame below this one alive, with the device arrays in its locals
        # (a batch, activations, a half-built loop): clear them, or the pool cannot free their blocks.
        traceback.clear_frames(exc.__traceback__)
        raise
    finally:
        if loop is not None:
            loop.drop()  # the data, buffers, parameters, optimizer state and graph pool
        loop = None
        release_memory(device.xp)  # then give CuPy's pooled blocks back, when fit returns or raises


@dataclass
class _DeviceSet:
    """A data set, or the batch buffers, on the device, examples first."""

    X: Array  # (m, n_x)
    Y: Array  # (m, n_y)
    # softmax only: argmax of Y's rows, taken once (the same values as per batch, as argmax of a
    # row does not depend on the batch); accuracy compares it with argmax(Z)
    labels: Array | None

    @classmethod
    def on_device(cls, xp: Any, host: tuple[np.ndarray, np.ndarray], output: str) -> _DeviceSet:
        X, Y = xp.asarray(host[0]), xp.asarray(host[1])  # data moves to the device once
        return cls(X, Y, xp.argmax(Y, axis=1) if output == "softmax" else None)

    @property
    def m(self) -> int:
        return int(self.X.shape[0])


def batches(
    xp: Any, data: _DeviceSet, batch_size: int, perm: Array | None, buffers: _DeviceSet | None, fast: bool
) -> Iterator[tuple[Array, Array, Array | None, slice | Array]]:
    """(X, Y, labels, rows) of each mini-batch in order: slices of ``data``, or with ``perm`` its rows
    ``perm[s:e]`` gathered into ``buffers`` (a row gather is cheap on examples-first data; X[:, perm]
    on features-first data is not). ``rows`` says which examples (the Gram path's dW1 needs them).
    ``fast``: the engine's compiled gather (Engine.fast)."""
    m = data.m
    for s in range(0, m, batch_size):
        e = min(s + batch_size, m)
        if perm is None or buffers is None:
            yield data.X[s:e], data.Y[s:e], None if data.labels is None else data.labels[s:e], slice(s, e)
            continue
        xb, yb, lb = buffers.X[: e - s], buffers.Y[: e - s], None
        idx = perm[s:e]
        take_rows(xp, data.X, idx, xb, fast)
        take_rows(xp, data.Y, idx, yb, fast)
        if data.labels is not None and buffers.labels is not None:
            lb = buffers.labels[: e - s]
            take_rows(xp, data.labels, idx, lb)
        yield xb, yb, lb, idx


@dataclass
class _TrainingLoop:
    """fit's state from setup to result: the data on the device, parameters (views of one flat
    array, like the engine's gradients and the optimizer's state, so an optimizer step is one pass
    per operation over all of them), the epoch's accumulators, history and timings."""

    cfg: TrainConfig
    device: Device
    train: _DeviceSet
    val: _DeviceSet | None
    batch_size: int
    optimizer: Optimizer
    params: dict[str, Array]  # W{l}, b{l}: views of flat_params
    flat_params: Array
    engine: Engine
    evaluator: Engine | None  # validation, in chunks, no dropout
    buffers: _DeviceSet | None  # the shuffled batch's rows (mini-batches with shuffle only)
    start_epoch: int
    history: list[EpochRecord]
    t_start: float
    # the epoch's loss (float64) and right answers, summed on the device in place, step by step
    loss_total: Array = None
    correct_total: Array = None
    graphed: stepgraph.GraphedStep | None = None
    gram: GramLayer | None = None  # layer 1 in coefficient space (models/gram.py), or None: the textbook path
    plan: GramPlan | None = None
    epoch_rng: Any = None  # the epoch's generator, for the steps' dropout masks
    device_rngs_made: int = 0  # device generators the epochs made (dropout on a GPU only)
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def start(
        cls,
        cfg: TrainConfig,
        device: Device,
        *,
        train: tuple[np.ndarray, np.ndarray],
        val: tuple[np.ndarray, np.ndarray] | None,
        checkpoint: Checkpoint | None,
        t_start: float,
        path: FitPath = "auto",
        shared: SharedGram | None = None,
    ) -> _TrainingLoop:
        xp, dtype = device.xp, np.dtype(cfg.dtype)
        train_set = _DeviceSet.on_device(xp, train, cfg.output)
        val_set = None if val is None else _DeviceSet.on_device(xp, val, cfg.output)
        m, n_y = train_set.m, cfg.layer_dims[-1]
        m_val, resuming = 0 if val_set is None else val_set.m, checkpoint is not None
        epochs_left = cfg.epochs - (checkpoint.epoch if checkpoint is not None else 0)
        gram_plan = plan(cfg, m, m_val, path, resuming, epochs_left)
        batch_size = m if cfg.batch_size is None else min(cfg.batch_size, m)
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
        gram = None
        if gram_plan.use:  # layer 1 in coefficient space: its inputs become U = D R^T (models/gram.py)
            X_dev = train_set.X
            XX = None if shared is None else shared.block(xp, "XX", (train[0],), lambda: xp.matmul(X_dev, X_dev.T))
            gram = _to_gram(xp, train_set, params, optimizer, gram_plan.bases, XX)
            train_set = _DeviceSet(gram.U, train_set.Y, train_set.labels)
            if val_set is not None:
                D_dev = val_set.X
                XD = None
                if shared is not None and val is not None:
                    XD = shared.block(xp, "XD", (train[0], val[0]), lambda: xp.matmul(X_dev, D_dev.T))
                val_inputs = gram.inputs_transposed(val_set.X, XD)  # (p, m_val)
                val_set = _DeviceSet(val_inputs.T, val_set.Y, val_set.labels)
        n_x = int(train_set.X.shape[1])  # layer 1's input width (p on the Gram path)
        flat_params, layout = flatten_params(xp, params)
        optimizer.bind_flat(flat_params, layout)
        engine = Engine(cfg, device, params, batch_size, gram=gram, gram_inputs=None if gram is None else gram.UT)
        evaluator = None
        if val_set is not None:
            val_inputs = None if gram is None else val_set.X.T  # (p, m_val)
            chunk = _validation_chunk(cfg, val_set.m)
            evaluator = Engine(cfg, device, params, chunk, training=False, gram=gram, gram_inputs=val_inputs)
        buffers = None
        if cfg.shuffle and batch_size < m:  # full batch: the order changes nothing
            labels = train_set.labels
            buffers = _DeviceSet(
                xp.empty((batch_size, n_x), dtype=dtype),
                xp.empty((batch_size, n_y), dtype=dtype),
                None if labels is None else xp.empty((batch_size,), dtype=labels.dtype),
            )
        loop = cls(
            cfg=cfg,
            device=device,
            train=train_set,
            val=val_set,
            batch_size=batch_size,
            optimizer=optimizer,
            params=params,
            flat_params=flat_params,
            engine=engine,
            evaluator=evaluator,
            buffers=buffers,
            start_epoch=start_epoch,
            history=history,
            t_start=t_start,
            loss_total=xp.zeros((), dtype=xp.float64),
            correct_total=xp.zeros((), dtype=xp.int64),
            gram=gram,
            plan=gram_plan,
        )
        # On a GPU, full batches replay one captured step (models/stepgraph.py) when the step has no
        # per-step randomness and reads fixed buffers: the shuffled batch buffers, or the whole set.
        full_batch = batch_size == m
        # (the Gram path's shuffled batches scatter into columns the batch's indices name: not graphed)
        graphable = buffers is not None and gram is None or full_batch
        if not is_numpy(xp) and stepgraph.enabled() and cfg.dropout_keep_prob == 1 and graphable:
            fixed = buffers or train_set
            loop.graphed = stepgraph.GraphedStep(
                xp,
                functools.partial(loop.train_step, fixed.X, fixed.Y, fixed.labels),
                engine.flat_grads,
                loop.loss_total,
                loop.correct_total,
            )
        synchronize(xp)  # the data's copies to the device are queued, not done: setup_s includes them
        loop.timings = {"setup_s": time.perf_counter() - t_start, "train_s": 0.0, "validation_s": 0.0}
        return loop

    def drop(self) -> None:
        """Let go of everything this loop holds, device arrays first (after result(), or on failure).

        The step graph's partial refers back to the loop (a cycle only the garbage collector would
        break), so the references are cleared here instead, and the graph closed with its pool."""
        if self.graphed is not None:
            with contextlib.suppress(Exception):  # failing already (a broken device): the references still go
                self.graphed.close()
        vars(self).clear()

    def train_step(
        self,
        xb: Array,
        yb: Array,
        lb: Array | None,
        grad_factor: float | None,
        loss_acc: Array,
        correct_acc: Array,
        rows: slice | Array | None = None,
    ) -> None:
        """Forward, output, backward on one batch: gradients (times ``grad_factor``) into
        engine.flat_grads; the batch's loss and right answers added into the two accumulators.
        ``rows``: the batch's examples (None: the first B)."""
        engine, cfg = self.engine, self.cfg
        acts, ZL = engine.forward(xb, self.epoch_rng, rows)
        AL, loss_sum, correct = engine.output(ZL, yb, lb)
        if cfg.l2:
            loss_sum = loss_sum + 0.5 * cfg.l2 * engine.l2_sum()  # B * l2/(2B) sum ||W||^2
        engine.backward(acts, AL, yb, grad_factor=1.0 if grad_factor is None else grad_factor, rows=rows)
        loss_acc += loss_sum.astype(self.device.xp.float64)  # float64 sum over the epoch
        if correct is not None:
            correct_acc += correct

    def run_epoch(self, epoch: int) -> EpochRecord:
        """Train the 0-based ``epoch``, validate, and append its record to the history."""
        t_epoch = time.perf_counter()
        cfg, xp, optimizer, m = self.cfg, self.device.xp, self.optimizer, self.train.m
        lr = cfg.learning_rate_at(epoch)
        optimizer.learning_rate = lr
        # None, or a factor update_prescaled_flat wants folded into the gradients (gd: its lr)
        grad_factor = optimizer.prescale()
        self.epoch_rng = device_rng(xp, cfg.seed, epoch)
        perm = None if self.buffers is None else xp.asarray(self.epoch_rng.permutation(m))
        self.loss_total[...] = 0
        self.correct_total[...] = 0
        for xb, yb, lb, rows in batches(xp, self.train, self.batch_size, perm, self.buffers, self.engine.fast):
            if self.graphed is not None and xb.shape[0] == self.batch_size:
                self.graphed.step(grad_factor)
            else:
                self.train_step(xb, yb, lb, grad_factor, self.loss_total, self.correct_total, rows)
            if grad_factor is not None:
                optimizer.update_prescaled_flat(self.flat_params, self.engine.flat_grads)
            else:
                optimizer.update_flat(self.flat_params, self.engine.flat_grads)
        self.device_rngs_made += self.epoch_rng.device_made  # made on the first dropout mask only
        loss = float(self.loss_total) / m  # float(loss) syncs the GPU: once per epoch, on purpose
        if not math.isfinite(loss):
            raise TrainingDiverged(epoch + 1, loss, lr)
        accuracy = None if cfg.output == "linear" else int(self.correct_total) / self._answers(m)
        self.timings["train_s"] += time.perf_counter() - t_epoch
        record = EpochRecord(epoch + 1, loss, accuracy)
        if self.val is not None:
            self._validate(record, lr)
        self.history.append(record)
        return record

    def _answers(self, m: int) -> int:
        """How many answers m examples give: sigmoid counts each output, softmax each example."""
        return m * self.cfg.layer_dims[-1] if self.cfg.output == "sigmoid" else m

    def _validate(self, record: EpochRecord, lr: float) -> None:
        """val_loss and val_accuracy into ``record``: one pass over the validation set, l2 term included."""
        assert self.val is not None and self.evaluator is not None
        t_val, val, cfg = time.perf_counter(), self.val, self.cfg
        v_loss, v_correct = self.evaluator.evaluate(val.X, val.Y, val.labels)
        if cfg.l2:
            v_loss = v_loss + 0.5 * cfg.l2 * self.engine.l2_sum()
        record.val_loss = float(v_loss) / val.m  # syncs the GPU
        if not math.isfinite(record.val_loss):  # fail now: never an Infinity in the history or a "succeeded"
            raise ValidationLossNotFinite(record.epoch, record.val_loss, lr)
        if v_correct is not None:
            record.val_accuracy = int(v_correct) / self._answers(val.m)
        self.timings["validation_s"] += time.perf_counter() - t_val

    def checkpoint(self, epochs_done: int) -> Checkpoint:
        """A host copy of the state after ``epochs_done`` epochs (EpochState.checkpoint calls it)."""
        return Checkpoint(
            epoch=epochs_done,
            parameters=self._textbook_params(),
            optimizer_state=self._textbook_optimizer_state(),
            history=self.history[:epochs_done],
            seed=self.cfg.seed,
        )

    def result(self, stopped: bool) -> FitResult:
        done = len(self.history)
        trained = done - self.start_epoch
        timings = self.timings
        timings["epoch_mean_s"] = timings["train_s"] / trained if trained else 0.0
        timings["total_s"] = time.perf_counter() - self.t_start
        step_graph = None
        if self.graphed is not None:
            self.graphed.close()
            step_graph = self.graphed.describe()
        return FitResult(
            parameters=self._textbook_params(),
            history=self.history,
            device=self.device.name,
            timings=timings,
            stopped=stopped,
            epochs_completed=done,
            step_graph=step_graph,
            device_rng=None if is_numpy(self.device.xp) else f"{DEVICE_RNG}: {self.device_rngs_made} made",
            path="textbook" if self.gram is None else "gram",
            path_reason=None if self.plan is None else self.plan.reason,
        )

    def _textbook_params(self) -> dict[str, np.ndarray]:
        """Host copies of the parameters, W1 formed as W_eff R on the Gram path (read only here)."""
        params = dict(self.params)
        if self.gram is not None:
            params["W1"] = self.gram.form(params["W1"])
        return _params_to_host(params)

    def _textbook_optimizer_state(self) -> dict[str, np.ndarray]:
        """The optimizer's state arrays, momentum's v_W1 formed on the Gram path (a linear state)."""
        state = self.optimizer.state_arrays()
        if self.gram is not None and "v_W1" in state:
            state["v_W1"] = np.array(to_host(self.gram.form(self.optimizer.state["v_W1"])))
        return state


def _validation_chunk(cfg: TrainConfig, m_val: int) -> int:
    """Validation examples per forward pass: _VAL_CHUNK, or fewer where the layers are so wide that its
    buffers would pass EVAL_BUDGET_BYTES (what TrainConfig.estimate_memory_bytes counts for them).
    val_accuracy does not depend on it; val_loss sums the chunks' float sums, so its last bits do."""
    return chunk_rows(validation_row_bytes(cfg.layer_dims, np.dtype(cfg.dtype).itemsize), min(_VAL_CHUNK, m_val))


def _params_to_host(params: dict[str, Array]) -> dict[str, np.ndarray]:
    return {k: np.array(to_host(v)) for k, v in params.items()}


def _to_gram(
    xp: Any, train: _DeviceSet, params: dict[str, Array], optimizer: Optimizer, k: int, XX: Array | None = None
) -> GramLayer:
    """The Gram layer of ``train`` (X examples first) started from params' W1 (and a resumed
    momentum's v_W1 when k == 2); W1 and v_W1 are replaced in place by their W_eff. ``XX``: X X^T
    when a sweep pack already has it."""
    bases = [params["W1"]] + ([optimizer.state["v_W1"]] if k == 2 else [])
    gram = GramLayer(xp, train.X, bases, XX)
    params["W1"] = gram.start(0, params["W1"].dtype)
    if k == 2:
        optimizer.state["v_W1"] = gram.start(1, params["W1"].dtype)
    return gram


def _restore(ckpt: Checkpoint, cfg: TrainConfig, xp: Any, dtype: np.dtype, optimizer: Optimizer) -> dict[str, Array]:
    """The checkpoint's parameters on the device, after checking they fit ``cfg``; its optimizer state loaded."""
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
