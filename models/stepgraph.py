"""fit's training step on a GPU, replayed from a CUDA graph instead of launched kernel by kernel.

A step of a small network is dozens of short kernels, and on a GPU
the time goes into launching them from Python, not into running them. So fit captures the step's
forward pass, output, loss and backward pass once (models.backend.DeviceGraph) and replays it for
every full batch: one launch. The row gather before it and the optimizer update after it stay
ordinary launches, so the graph holds no per-step number (Adam's bias corrections change every
step) and reads its batch from fit's fixed batch buffers.

What is frozen in a graph: the buffers (fit allocates them once) and the Python numbers the step
uses. So the one number that changes during a run, the factor folded into the gradients (gd's
learning rate, which decays once an epoch), is not a Python number in the graph: the step reads
it from a 0-d device array that the captured kernels read when they run, written before each
replay where it changed (outside the graph). One capture serves a whole decaying-lr run. Dropout
draws its masks from the device generator per step and is not captured: those runs stay kernel by
kernel.

Trust, then verify: each capture is checked once on its first batch. The same step runs
kernel by kernel first; the replay must then give the same gradients, loss and count bit for bit
(the same kernels on the same data). If capture fails (a CuPy call that waits for the device, a
driver without capture support), the replay differs, or CUDA refuses a launch, fit goes on kernel
by kernel from that step and says why in FitResult.step_graph. Either way the results are the
kernel-by-kernel ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .backend import Array, DeviceGraph

_enabled = True  # as models.fused: a process-wide switch, for comparisons (bench) and tests


def set_enabled(flag: bool) -> None:
    """Allow step graphs in this process (default) or not (every step kernel by kernel)."""
    global _enabled
    _enabled = bool(flag)


def enabled() -> bool:
    return _enabled


@contextmanager
def switched(flag: bool) -> Iterator[None]:
    """Step graphs allowed (or not) inside the block, and as they were before it after."""
    was = _enabled
    set_enabled(flag)
    try:
        yield
    finally:
        set_enabled(was)


class GraphedStep:
    """``run_step(grad_factor, loss_acc, correct_acc)`` (the step on fixed inputs, its gradients
    times ``grad_factor``, adding its loss and count into the two 0-d device accumulators) replayed
    from one graph. ``grad_factor`` is None or a Python float kernel by kernel, and in the graph
    ``self.factor``, a float64 0-d device array holding it (models.engine.Engine.backward takes
    either, with the same bits).

    ``grads``: the flat gradient array the step writes (or a tuple of them: a sweep pack's, models/packed.py);
    ``loss_acc`` / ``correct_acc``: the epoch accumulators (float64, int64; 0-d for fit, one per trial for
    a pack), updated in place by every step.
    """

    def __init__(
        self,
        xp: Any,
        run_step: Callable[..., None],
        grads: Array | tuple[Array, ...],
        loss_acc: Array,
        correct_acc: Array,
    ) -> None:
        self.xp, self.run_step = xp, run_step
        self.grads: tuple[Array, ...] = grads if isinstance(grads, tuple) else (grads,)
        self.loss_acc, self.correct_acc = loss_acc, correct_acc
        self.graph: DeviceGraph | None = None
        self.factor: Array = xp.zeros((), dtype=xp.float64)  # grad_factor, read by the graph's kernels
        self.factor_value: float | None = None  # what self.factor holds (None: the graph reads no factor)
        self.off_reason: str | None = None
        self.captures = 0
        self.replays = 0

    def step(self, grad_factor: float | None) -> None:
        """One full-batch step: a replay, or a capture and its check, or kernel by kernel."""
        if self.off_reason is not None:
            self.run_step(grad_factor, self.loss_acc, self.correct_acc)
        elif self.graph is not None and (grad_factor is None) == (self.factor_value is None):
            if grad_factor is not None and grad_factor != self.factor_value:
                self._set_factor(grad_factor)  # a new rate: a write the replay reads, not a new capture
            try:
                self.graph.launch()
            except Exception as exc:
                self.off_reason = f"a replay failed after {self.replays}: {type(exc).__name__}: {exc}"
                self.graph = None
                self.run_step(grad_factor, self.loss_acc, self.correct_acc)
                return
            self.replays += 1
        else:
            self._capture(grad_factor)

    def _capture(self, grad_factor: float | None) -> None:
        xp = self.xp
        self.close()
        # the step kernel by kernel, into scratch accumulators: the reference the replay must equal
        loss_ref, correct_ref = xp.zeros_like(self.loss_acc), xp.zeros_like(self.correct_acc)
        self.run_step(grad_factor, loss_ref, correct_ref)
        grads_ref = tuple(g.copy() for g in self.grads)
        before = (self.loss_acc.copy(), self.correct_acc.copy())
        want = (before[0] + loss_ref, before[1] + correct_ref)
        reason: str | None
        if grad_factor is not None:
            self._set_factor(grad_factor)
        factor = None if grad_factor is None else self.factor
        try:
            graph = DeviceGraph(xp, lambda: self.run_step(factor, self.loss_acc, self.correct_acc))
        except Exception as exc:
            reason = f"capture failed: {type(exc).__name__}: {exc}"
        else:
            reason = self._first_replay(graph, before, grads_ref, want)
        if reason is not None:  # this step's results are the kernel-by-kernel ones; the graph goes
            self.off_reason = reason
            for g, ref in zip(self.grads, grads_ref, strict=True):
                g[...] = ref
            self.loss_acc[...] = want[0]
            self.correct_acc[...] = want[1]
            return
        self.graph, self.factor_value = graph, grad_factor
        self.captures += 1
        self.replays += 1

    def _set_factor(self, grad_factor: float) -> None:
        self.factor[...] = grad_factor  # a host scalar into device memory, queued on the stream: no sync
        self.factor_value = grad_factor

    def _first_replay(
        self,
        graph: DeviceGraph,
        before: tuple[Array, Array],
        grads_ref: tuple[Array, ...],
        want: tuple[Array, Array],
    ) -> str | None:
        """Replay the new graph on the batch just computed kernel by kernel; None if it gave the
        same bits, else what went wrong."""
        xp = self.xp
        # A capture runs nothing on a GPU; a stand-in that runs as it records must not count twice
        # either. Clear the gradients, so the check sees the replay write every one.
        self.loss_acc[...] = before[0]
        self.correct_acc[...] = before[1]
        for g in self.grads:
            g[...] = 0
        try:
            graph.launch()
        except Exception as exc:
            return f"the first replay failed: {type(exc).__name__}: {exc}"
        if (
            all(_same_bits(xp, g, ref) for g, ref in zip(self.grads, grads_ref, strict=True))
            and _same_bits(xp, self.loss_acc, want[0])
            and bool(xp.all(self.correct_acc == want[1]))
        ):  # syncs: once per capture
            return None
        # how far off: a broken graph, or rounding?
        worst = max(float(xp.max(xp.abs(g - ref))) for g, ref in zip(self.grads, grads_ref, strict=True))
        loss_off = float(xp.max(xp.abs(self.loss_acc - want[0])))
        wrong = int(xp.sum(self.correct_acc != want[1]))
        return (
            f"the replay differed from the kernel-by-kernel step (gradients: max |difference| {worst:.3g}; "
            f"loss: max |difference| {loss_off:.3g}; right answers differing: {wrong}); not used"
        )

    def close(self) -> None:
        if self.graph is not None:
            self.graph.close()
            self.graph = None

    def describe(self) -> str:
        """For FitResult.step_graph: whether the steps replayed from graphs, or why not."""
        if self.off_reason is not None:
            return f"off: {self.off_reason}"
        return f"on: {self.replays} steps replayed from {self.captures} capture{'s' if self.captures != 1 else ''}"


def _same_bits(xp: Any, a: Array, b: Array) -> bool:
    """Bitwise equality of two float arrays (NaN equals NaN of the same payload, -0.0 differs from 0.0)."""
    as_uint = {2: xp.uint16, 4: xp.uint32, 8: xp.uint64}[a.dtype.itemsize]
    return bool(xp.all(a.view(as_uint) == b.view(as_uint)))
