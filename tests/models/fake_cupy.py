"""A CuPy stand-in on the CPU, to run fit's GPU code path where no GPU is.

fit on a GPU is the same engine with ``xp = cupy``. What breaks there and not on NumPy is the
contract between host and device, so that is what this module enforces, as CuPy does:
- device arrays are their own type (``DeviceArray``, a wrapper whose class says module "cupy", so
  models.backend.get_namespace answers this module); turning one into a NumPy array implicitly
  (``np.asarray(x)``, ``np.array(x)``) raises TypeError, as cupy.ndarray.__array__ does; ``.get()``
  and ``float()``/``int()`` are the ways out, as on CuPy;
- a function or operator that mixes a device array with a host NumPy array raises TypeError
  (CuPy: "Unsupported type <class 'numpy.ndarray'>"); only ``asarray``/``array`` take host arrays in;
- reductions return 0-d device arrays, not Python or NumPy scalars (``cupy.sum(x)`` is an array);
- NumPy's own functions and ufuncs on device arrays run and return device arrays (CuPy implements
  NEP 13/18), and a device array is never a np.ndarray, so NumPy-only code paths (models.fused's
  Numba kernels, ``xp is np`` branches) are never taken;
- ``random.default_rng``, the memory pools, ``cuda.Stream.null.synchronize()``, ``cuda.Device().id``
  and ``cuda.runtime.memGetInfo()``: what models.backend calls; ``random.Generator`` over
  ``XORWOW``/``Philox4x3210`` states sized as CuPy sizes them (``sm_count``), counted as made; the
  default pool's ``used_bytes``/``total_bytes`` from the device arrays alive; synchronize() counted;
- CUDA graphs as stream capture makes them (``Stream.begin_capture`` / ``end_capture``,
  ``Graph.launch``): while a stream captures, every operation that makes or writes device data is
  recorded with the very arrays it touched, and a launch replays those operations on whatever
  those arrays hold then. So Python numbers and control flow are frozen at capture, as on a GPU,
  and a view taken then keeps looking at the same memory. Waiting for the device while capturing
  (``float(x)``, ``.get()``, host copies in, random draws) raises, as CuPy does. Unlike a GPU,
  the stand-in also runs what it records (it needs the results to go on); models/stepgraph.py
  undoes that before it checks a replay.
- ``ElementwiseKernel`` for bodies that are C and Python alike (models.backend's optimizer steps),
  run with NumPy and counted per launch.
The arithmetic is NumPy's, so results equal a NumPy run wherever the randomness is the same.
It does not model CuPy's numerics (its own kernels round like NumPy's in practice, not provably),
stream ordering or memory reuse: scripts/gpu-check on a real GPU is still the test of those.
"""

from __future__ import annotations

import contextlib
import sys
import types
import weakref

import numpy as np

_MODULE_KEY = __name__  # this module's key in sys.modules (installed() renames the module itself)
_HOST_IN = {"asarray", "array"}  # the documented ways in (cupy.asarray / cupy.array of a NumPy array)
_SYNCING = {"item", "tolist", "tobytes"}  # methods that hand a value to the host (wait for the device)
_recording: list | None = None  # while a stream captures: the operations a graph launch replays


def _no_sync(what: str) -> None:
    if _recording is not None:
        raise RuntimeError(
            f"{what} waits for the device, which is not allowed while a stream captures "
            "(cudaErrorStreamCaptureUnsupported)"
        )


def _record(replay) -> None:
    if _recording is not None:
        _recording.append(replay)


class DeviceArray:
    """A device array: a NumPy array inside, never handed to NumPy implicitly."""

    __slots__ = ("_a",)
    __array_priority__ = 100

    def __init__(self, host: np.ndarray):
        self._a = host
        _memory_pool.track(host)

    # -- what CuPy arrays have ---------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    flags = property(lambda self: self._a.flags)
    strides = property(lambda self: self._a.strides)
    T = property(lambda self: DeviceArray(self._a.T))

    def get(self) -> np.ndarray:
        _no_sync("get()")
        return self._a.copy()

    def __array__(self, *args, **kwargs):
        raise TypeError(
            "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to "
            "construct a NumPy array explicitly."
        )

    def __float__(self):
        _no_sync("float()")
        return float(self._a)

    def __int__(self):
        _no_sync("int()")
        return int(self._a)

    def __bool__(self):
        _no_sync("bool()")
        return bool(self._a)

    def __index__(self):
        _no_sync("an index")
        return self._a.__index__()

    def __len__(self):
        return len(self._a)

    def __repr__(self):
        return f"DeviceArray({self._a!r})"

    def __getitem__(self, key):
        return _call(self._a.__getitem__, "indexing", (key,), {})  # a view, or a gather (recorded)

    def __setitem__(self, key, value):
        if isinstance(value, np.ndarray):  # CuPy copies a host value in on assignment
            _no_sync("copying a host array in")
            value = DeviceArray(value)
        target, ukey, uvalue = self._a, _unwrap(key, "indexing"), _unwrap(value, "assignment")
        target[ukey] = uvalue
        _record(lambda: target.__setitem__(ukey, uvalue))

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return _call(getattr(ufunc, method), ufunc.__name__, inputs, kwargs)

    def __array_function__(self, func, types_, args, kwargs):
        return _call(func, func.__name__, args, kwargs)

    def __getattr__(self, name):  # ravel, reshape, astype, copy, sum, max, item, ...
        if name.startswith("__"):  # no __array_interface__, __array_struct__, ...: NumPy must not see inside
            raise AttributeError(name)
        if name in _SYNCING:
            _no_sync(f".{name}()")
        method = getattr(self._a, name)
        return lambda *args, **kwargs: _call(method, name, args, kwargs)


def _operator(name):
    def op(self, *args):
        return _call(getattr(self._a, name), name, args, {})

    return op


def _inplace(name):
    def op(self, other):
        method, uother = getattr(self._a, name), _unwrap(other, name)
        method(uother)
        _record(lambda: method(uother))
        return self

    return op


for _name in ("add", "sub", "mul", "truediv", "floordiv", "pow", "matmul", "mod", "and", "or", "xor"):
    setattr(DeviceArray, f"__{_name}__", _operator(f"__{_name}__"))
    setattr(DeviceArray, f"__r{_name}__", _operator(f"__r{_name}__"))
    setattr(DeviceArray, f"__i{_name}__", _inplace(f"__i{_name}__"))
for _name in ("lt", "le", "gt", "ge", "eq", "ne", "neg", "pos", "abs", "invert"):
    setattr(DeviceArray, f"__{_name}__", _operator(f"__{_name}__"))
DeviceArray.__module__ = "cupy"


def _unwrap(value, where: str):
    """The NumPy value inside; a host array here is the mistake CuPy refuses."""
    if isinstance(value, DeviceArray):
        return value._a
    if isinstance(value, np.ndarray):
        raise TypeError(
            f"Unsupported type {type(value)} in {where}: a host NumPy array mixed with device "
            "arrays (move it with cupy.asarray first)"
        )
    if isinstance(value, (tuple, list)):
        return type(value)(_unwrap(v, where) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v, where) for k, v in value.items()}
    return value


def _wrap(value):
    """Arrays and NumPy scalars (a reduction's result) come back as device arrays, as on CuPy."""
    if isinstance(value, np.ndarray):
        return DeviceArray(value)
    if isinstance(value, np.generic):
        return DeviceArray(np.asarray(value))
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    return value


def _call(fn, name, args, kwargs):
    if name in _HOST_IN:  # host -> device copies are allowed, and copy as CuPy does
        host = args[0]._a if isinstance(args[0], DeviceArray) else args[0]
        if not isinstance(args[0], DeviceArray):
            _no_sync(f"{name}() of a host array")
        result = DeviceArray(
            np.array(
                host,
                *_unwrap(args[1:], name),
                copy=True,
                **_unwrap({k: v for k, v in kwargs.items() if k != "copy"}, name),
            )
        )
        if _recording is not None:  # a device-to-device copy: a kernel like any other
            _record(lambda: np.copyto(result._a, host))
        return result
    out = kwargs.get("out")
    uargs, ukwargs = _unwrap(args, name), _unwrap(kwargs, name)
    result = fn(*uargs, **ukwargs)
    if out is not None:  # the caller's device array, written in place (a ufunc gets out as a 1-tuple)
        _record(lambda: fn(*uargs, **ukwargs))
        return out[0] if isinstance(out, tuple) and len(out) == 1 else out
    wrapped = _wrap(result)
    if _recording is not None and isinstance(wrapped, DeviceArray) and not _is_view(result, fn, uargs):
        # new device data: a replay computes it again into the same array
        _record(lambda: np.copyto(wrapped._a, fn(*uargs, **ukwargs)))
    elif _recording is not None and isinstance(wrapped, tuple):
        raise NotImplementedError(f"the stand-in does not capture {name}, which returns several arrays")
    return wrapped


def _is_view(result, fn, uargs) -> bool:
    """Whether ``result`` looks at an input's memory (a slice, .T, .view(), a reshape): no kernel."""
    if not isinstance(result, np.ndarray):
        return False
    inputs = [a for a in (getattr(fn, "__self__", None), *uargs) if isinstance(a, np.ndarray)]
    return any(np.may_share_memory(result, a) for a in inputs)


def __getattr__(name):  # cupy.<function>: NumPy's, behind the host/device checks
    target = getattr(np, name)
    if isinstance(target, type) or not callable(target):  # dtypes (cupy.float32 is numpy.float32), constants
        return target
    return lambda *args, **kwargs: _call(target, name, args, kwargs)


class _Generator:
    def __init__(self, seed):
        self._g = np.random.default_rng(seed)

    def random(self, size=None, dtype=np.float64):
        if _recording is not None:
            raise NotImplementedError("the stand-in does not capture random draws (fit never graphs dropout)")
        return DeviceArray(np.asarray(self._g.random(size, dtype=dtype)))


sm_count = 132  # the device's SM count, as a GPU model would have it (tests change it)


class _BitGenerator:
    """cuRAND bit generators as CuPy 13 drives them (cupy/random/_bit_generator.pyx and
    cupy_distributions.cu): ``size`` states (by default 8 * 256 * SM count), and a draw of n values
    takes value i from state ``i % size``, so a draw larger than the state count depends on it.
    Each state's stream is a counter-based hash (not cuRAND's numbers); ``made`` counts instances."""

    made = 0

    def __init__(self, seed=None, *, size=-1):
        self.seed = int(np.random.SeedSequence(seed).generate_state(1, np.uint32)[0])
        self.size = 8 * 256 * sm_count if size < 0 else size
        self._drawn = np.zeros(self.size, dtype=np.uint64)  # per state: values drawn so far
        type(self).made += 1

    def _uniform(self, n: int) -> np.ndarray:
        i = np.arange(n, dtype=np.uint64)
        state, k = i % np.uint64(self.size), i // np.uint64(self.size)
        key = np.uint64(self.seed * 0x9E3779B97F4A7C15 % (1 << 64))
        x = key + state * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ ((self._drawn[state] + k) * np.uint64(0x94D049BB133111EB))
        for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):  # splitmix64's finaliser
            x = (x ^ (x >> np.uint64(shift))) * np.uint64(mult)
        x = x ^ (x >> np.uint64(31))
        np.add.at(self._drawn, state, np.uint64(1))
        return x


class XORWOW(_BitGenerator):
    made = 0


class Philox4x3210(_BitGenerator):
    made = 0


class _BitGenerated:
    """cupy.random.Generator over one of the bit generators above."""

    def __init__(self, bit_generator):
        self.bit_generator = bit_generator

    def random(self, size=None, dtype=np.float64):
        if _recording is not None:
            raise NotImplementedError("the stand-in does not capture random draws (fit never graphs dropout)")
        shape = () if size is None else size
        n = int(np.prod(shape))
        bits = self.bit_generator._uniform(n)
        if np.dtype(dtype) == np.float32:
            values = (bits >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)
        else:
            values = (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53
        return DeviceArray(values.reshape(shape))


random = types.SimpleNamespace(
    default_rng=_Generator, Generator=_BitGenerated, XORWOW=XORWOW, Philox4x3210=Philox4x3210
)


class _Pool:
    """A memory pool's accounts: ``used_bytes`` counts the device arrays alive now (the NumPy
    arrays that own their memory, followed with weak references); ``total_bytes`` what the pool
    holds, the most used since the last ``free_all_blocks``, as CuPy's pool keeps freed blocks."""

    def __init__(self):
        self.freed = 0
        self._used = self._held = 0

    def track(self, host: np.ndarray) -> None:
        if host.base is not None or self is not _memory_pool:  # a view: its owner is counted
            return
        nbytes = host.nbytes
        self._used += nbytes
        self._held = max(self._held, self._used)
        weakref.finalize(host, self._release, nbytes)

    def _release(self, nbytes: int) -> None:
        self._used -= nbytes

    def used_bytes(self) -> int:
        return self._used

    def total_bytes(self) -> int:
        return self._held

    def free_all_blocks(self):
        self.freed += 1
        self._held = self._used


_memory_pool, _pinned_pool = _Pool(), _Pool()


def get_default_memory_pool():
    return _memory_pool


def get_default_pinned_memory_pool():
    return _pinned_pool


class ElementwiseKernel:
    """cupy.ElementwiseKernel for bodies that are C and Python alike, as models.backend writes its
    optimizer steps: ``T name = expr;`` and ``out = expr;`` over + - * / and sqrt. The stand-in runs
    that same text with NumPy on whole arrays: each operation rounds as the per-element C does
    without fused multiply-adds (backend compiles with --fmad=false). Outputs are passed explicitly
    and updated in place; a scalar takes the arrays' dtype, as for a ``T`` parameter on CuPy. Each
    call is one launch (counted in ``launches``) and, while a stream captures, one recorded operation."""

    launches = 0  # calls of every such kernel in this process, for tests

    def __init__(self, in_params, out_params, operation, name="kernel", options=(), no_return=False, **kwargs):
        self.inputs = [p.split()[-1] for p in in_params.split(",")]
        self.outputs = [p.split()[-1] for p in out_params.split(",")]
        self.name, self.options, self.no_return = name, tuple(options), no_return
        self.statements = []  # (target, declares a local, compiled expression)
        for statement in filter(None, (s.strip() for s in operation.split(";"))):
            target, expr = (part.strip() for part in statement.split("=", 1))
            local = target.startswith("T ")
            target = target[2:].strip() if local else target
            if not (local or target in self.outputs) or not target.isidentifier():
                raise NotImplementedError(f"the stand-in cannot run the statement {statement!r} of {name}")
            self.statements.append((target, local, compile(expr, name, "eval")))

    def __call__(self, *args):
        if len(args) != len(self.inputs) + len(self.outputs):
            raise TypeError(f"{self.name} takes {len(self.inputs)} inputs and {len(self.outputs)} outputs")
        if not all(isinstance(a, DeviceArray) for a in args[len(self.inputs) :]):
            raise TypeError(f"{self.name}: the stand-in needs the output arrays passed, on the device")
        uargs = _unwrap(args, self.name)  # a host array among them raises, as on CuPy
        outs = uargs[len(self.inputs) :]
        scalar = outs[0].dtype.type

        def run():
            env = {
                n: (v if isinstance(v, np.ndarray) else scalar(v))
                for n, v in zip(self.inputs, uargs[: len(self.inputs)], strict=True)
            }
            env.update(zip(self.outputs, outs, strict=True))
            for target, local, code in self.statements:
                value = eval(code, {"__builtins__": {}, "sqrt": np.sqrt}, env)
                if local:
                    env[target] = value
                else:
                    env[target][...] = value

        run()
        _record(run)
        ElementwiseKernel.launches += 1
        return None if self.no_return else (args[len(self.inputs)] if len(outs) == 1 else args[len(self.inputs) :])


class Graph:
    """A captured graph: the recorded operations, replayed in order by each launch."""

    launches = 0  # launches of every graph in this process, for tests
    captures = 0  # graphs made (end_capture) in this process, for tests

    def __init__(self, operations):
        self._operations = operations
        Graph.captures += 1

    def launch(self, stream=None):
        if _recording is not None:
            raise RuntimeError("cannot launch a graph while a stream captures")
        for operation in self._operations:
            operation()
        Graph.launches += 1


class _Stream:
    null = None  # the legacy default stream, set below
    _current: list = []  # streams entered with ``with``, innermost last

    def __init__(self, null=False, non_blocking=False):
        self.is_null = null

    def __enter__(self):
        _Stream._current.append(self)
        return self

    def __exit__(self, *exc):
        _Stream._current.pop()
        return False

    syncs = 0  # synchronize() calls on any stream, for tests

    def synchronize(self):
        _no_sync("Stream.synchronize()")
        _Stream.syncs += 1

    def begin_capture(self, mode=None):
        global _recording
        if self.is_null:
            raise RuntimeError("cannot capture on the default (legacy) stream")
        if _recording is not None:
            raise RuntimeError("a stream is already capturing")
        _recording = []

    def end_capture(self):
        global _recording
        if _recording is None:
            raise RuntimeError("the stream is not capturing")
        operations, _recording = _recording, None
        return Graph(operations)

    def is_capturing(self):
        return _recording is not None


_Stream.null = _Stream(null=True)


class _MemoryPool:
    def malloc(self, size):
        raise AssertionError("the stand-in allocates with NumPy; nothing calls malloc")


@contextlib.contextmanager
def _using_allocator(allocator=None):
    yield


cuda = types.SimpleNamespace(
    Stream=_Stream,
    get_current_stream=lambda: _Stream._current[-1] if _Stream._current else _Stream.null,
    MemoryPool=_MemoryPool,
    using_allocator=_using_allocator,
    Device=lambda *a: types.SimpleNamespace(id=0),
    runtime=types.SimpleNamespace(memGetInfo=lambda: (12 << 30, 16 << 30)),
)


def installed(monkeypatch) -> types.ModuleType:
    """Make ``import cupy`` give this module for the rest of the test (and its ``__name__`` "cupy",
    which models.backend.release_memory checks); monkeypatch undoes both."""
    module = sys.modules[_MODULE_KEY]
    monkeypatch.setitem(sys.modules, "cupy", module)
    monkeypatch.setattr(module, "__name__", "cupy")
    monkeypatch.setattr(module, "_recording", None)  # a test that failed mid-capture leaves none behind
    return module
