"""Data parallelism on the CPU: a model splits each batch among replicas of itself, in threads.

NumPy runs an element-wise operation on one core, and OpenBLAS's own threads busy-wait between
matrix multiplies, holding the other cores. So on the NumPy backend a step is faster when BLAS
is single-threaded and each core runs the *whole* forward and backward of a slice of the batch.
``Network.forward`` does this by itself (so a loop written by hand is as fast as ``fit``): the
model is the first replica, and ``Layer.replica()`` copies share its parameter arrays
(read-only during the step) and keep their own activations and gradients; the copies'
gradients are added into the model's after backward, which gives exactly the full batch's
gradient. NumPy releases the GIL inside its loops and BLAS calls, so the threads really run in
parallel.

A batch is split only when every layer treats samples independently (``Layer.per_sample``) or
mixes them only through sums over the batch that it takes with ``batch_sum`` (``Layer.batch_sums``:
BatchNorm in training, whose statistics are then the whole batch's, added over the replicas at
a barrier; ``minicnn.core.batch_sum``), each replica gets at least
``MIN_SLICE`` samples and enough work to pay for the threads' hand-offs (``MIN_SLICE_WORK``,
estimated from the layers' shapes by ``work_per_sample``), the arrays are NumPy's, and
OpenBLAS's thread count can be set: it is 1 while replicas run, and restored right after.
Random draws in a split forward (Dropout's masks) come from one generator per replica, seeded
from the global generator (``random.generator_scope``), so a split run is as reproducible as a
whole one (for the same number of replicas).
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from minicnn.core import backend, random
from minicnn.core.batch_sum import ReplicaGroup, replica_scope
from minicnn.kernels import blas

MIN_SLICE = 16
"""Fewest samples per replica for splitting to pay. Measured on 2 cores for the reference CNN,
each setting in its own process (whole batch with 2 OpenBLAS threads against split in two,
seconds per epoch): batch 16, 13.9 against 14.7; batch 32, 16.8 against 13.7; batch 64, 14.4
against 10.9."""

MIN_SLICE_WORK = 1 << 20
"""Fewest elements read and written (``work_per_sample`` times its samples) per replica for
splitting to pay: a split forward and backward costs about 0.5 ms of thread hand-offs, more
than a replica saves below this. Measured on 2 cores (``python examples/split_threshold.py``,
training step split in two / whole): ReLU + Dense on (N, 512) 4.4x at 41k elements per
replica, 2.0x at 660k, 0.78x at 10.6M; an MLP 784-256-10 3.5x at 21k, 2.0x at 337k; the
reference CNN 0.99x at batch 32 (2.8M), 0.67x at 128. Between about 1M and 6M it depends on
the layers (1.1-1.7x for the small models, a gain for pooling), so the line is drawn where
every measured case below it lost."""

MAX_WORKERS = 8


def default_workers() -> int:
    """Replicas to split a NumPy step across: ``MINICNN_WORKERS`` if set, else the cores this
    process may use (at most ``MAX_WORKERS``)."""
    if os.environ.get("MINICNN_WORKERS"):
        return max(1, int(os.environ["MINICNN_WORKERS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, MAX_WORKERS))


def split_count(model: Any, x: Any, workers: int | None) -> int:
    """How many replicas should run ``model`` on batch ``x`` (1: do not split)."""
    count = default_workers() if workers is None else workers
    count = min(count, x.shape[0] // MIN_SLICE)
    if count < 2 or backend.is_cupy_array(x) or not blas.can_set_threads():
        return 1
    if not all(layer.per_sample or layer.batch_sums for _, layer in model.named_layers()):
        return 1
    if work_per_sample(model, tuple(x.shape[1:])) * (x.shape[0] // count) < MIN_SLICE_WORK:
        return 1
    return count


def work_per_sample(model: Any, sample_shape: tuple[int, ...]) -> int:
    """The elements one sample's forward through ``model`` reads and writes: its input's, plus
    twice each layer's output (written, then read by what follows). What splitting runs in
    parallel is NumPy's single-threaded passes over these arrays; matrix products are not
    counted, since OpenBLAS threads them by itself when the batch is not split. 0 when the
    shapes do not fit (the forward then says why, unsplit). About 10-30 us for the zoo's
    models, against the 0.5 ms a split costs."""
    try:
        rows = model.layer_shapes(sample_shape)
    except (ValueError, NotImplementedError):
        return 0
    return math.prod(sample_shape) + 2 * sum(math.prod(shape) for _, shape in rows)


def _layers(model: Any) -> list[Any]:
    return [layer for _, layer in model.named_layers()]


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_group_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    """The threads that run replicas 1..n (started on first use, never at import)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(MAX_WORKERS - 1, thread_name_prefix="minicnn-replica")
        return _pool


class Replicas:
    """A model and ``count - 1`` sharing copies of it; runs forward and backward of one batch
    split among them. Forward returns the slices it used, and backward takes them back, so
    ``no_grad`` inference in another thread can share the replicas with a training step."""

    def __init__(self, model: Any, count: int):
        self.model = model
        self.copies = [model.replica() for _ in range(count - 1)]

    @property
    def count(self) -> int:
        return len(self.copies) + 1

    def sync(self) -> None:
        """Point the copies' parameters and state arrays (BatchNorm's running statistics,
        wherever held) at the model's and copy each layer's mode (cheap when nothing changed)."""
        params = self.model.parameters()
        layers = _layers(self.model)
        for twin in self.copies:
            for mine, theirs in zip(twin.parameters(), params):
                if mine.data is not theirs.data:
                    mine.data = theirs.data
                    mine.grad = backend.module_of(theirs.data).zeros_like(theirs.data)
            for mine_layer, layer in zip(_layers(twin), layers):
                mine_layer._training = layer.__dict__.get("_training", True)
                state, own = layer.state_arrays(), mine_layer.state_arrays()
                if any(own.get(k) is not v for k, v in state.items()):
                    mine_layer.load_state_arrays(dict(state))

    def _run(self, fn: Callable[[Any, Any], Any], work: list[Any]) -> list[Any]:
        """``fn(replica, item)`` for each replica and its item of ``work``: the first in this
        thread, the others in the pool, each in a copy of this thread's modes and as one
        member of a ``ReplicaGroup`` (``batch_sum`` adds over them); BLAS single-threaded
        meanwhile."""
        replicas = [self.model] + self.copies
        group = ReplicaGroup(len(work))
        # Members of a group wait for each other, so two groups sharing the pool could each
        # hold threads the other waits for: one group that sums at a time. A split model that
        # is not per_sample holds a layer summing over the batch (split_count).
        synced = not self.model.per_sample

        def member(rank: int, replica: Any, item: Any) -> Any:
            try:
                with replica_scope(group, rank):
                    return fn(replica, item)
            except BaseException:
                group.abort()                   # the others must not wait for this one
                raise

        with _group_lock if synced else contextlib.nullcontext(), blas.single_threaded():
            jobs: list[Future] = [
                _executor().submit(contextvars.copy_context().run, member, rank, replica, item)
                for rank, (replica, item) in enumerate(zip(replicas[1:], work[1:]), start=1)]
            try:
                first: Any = member(0, replicas[0], work[0])
            except BaseException as exc:    # raised below, after every replica has stopped
                first = exc
            results = [first] + [job.exception() or job.result() for job in jobs]
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:       # the first real error, not another replica's broken barrier
            raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)),
                       errors[0])
        return results

    def forward(self, x: Any) -> tuple[Any, list[slice]]:
        """The model's output for x (N, ...), computed by up to ``count`` replicas, and the
        slices of the batch they took."""
        self.sync()
        n, parts = x.shape[0], min(self.count, x.shape[0])
        bounds = [n * k // parts for k in range(parts + 1)]
        slices = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
        seeds = iter(random.host_rng().integers(2**63, size=len(slices)).tolist())
        output = Gathered(n)

        def forward(replica: Any, rows: slice, seed: int) -> Any:
            with random.generator_scope(random.generator(seed)):
                return output.put(rows, replica.forward_layers(x[rows]))

        jobs = [(rows, next(seeds)) for rows in slices]
        return output.result(self._run(lambda replica, job: forward(replica, *job), jobs)), slices

    def backward(self, grad_out: Any, slices: list[slice], input_grad: bool) -> Any:
        """Back-propagate each slice in its replica, then add the copies' parameter gradients
        into the model's (the sum is the full batch's gradient)."""
        dx = Gathered(grad_out.shape[0])

        def backward(replica: Any, rows: slice) -> Any:
            if replica is not self.model:            # the model's own gradients accumulate
                replica.zero_grad()
            grad = replica.backward_layers(grad_out[rows], input_grad)
            return dx.put(rows, grad) if input_grad else grad

        grads = self._run(backward, slices)
        used = [twin.parameters() for twin in self.copies[:len(slices) - 1]]
        for k, param in enumerate(self.model.parameters()):
            for params in used:
                param.grad += params[k].grad
        return dx.result(grads) if input_grad else None


class Gathered:
    """One (N, ...) array assembled from the replicas' slices, each copied in by the thread
    that computed it as soon as it is done (``put``), so the copies run in parallel and overlap
    the slower replicas' work. One thread concatenating them afterwards cost a one-layer ReLU
    model on 128x64x28x28 about 30% of its split training step (medians of three runs on two
    cores: 11.5 ms with the concatenation, 7.9 ms with these copies).
    A slice that does not fit the array (another shape or dtype than the first) makes
    ``result`` concatenate the slices instead."""

    def __init__(self, n: int):
        self.n = n
        self.array: Any = None
        self.fits = True
        self._lock = threading.Lock()

    def put(self, rows: slice, part: Any) -> Any:
        """Copy ``part`` (the rows ``rows`` of the whole) into the array; returns part."""
        with self._lock:
            if self.array is None:
                self.array = backend.get_array_module(part).empty(
                    (self.n,) + tuple(part.shape[1:]), dtype=part.dtype)
            fits = part.shape[1:] == self.array.shape[1:] and part.dtype == self.array.dtype \
                and part.shape[0] == rows.stop - rows.start
            self.fits = self.fits and fits
        if fits:
            self.array[rows] = part
        return part

    def result(self, parts: list[Any]) -> Any:
        """The assembled (N, ...) array; ``parts`` (the slices in order) are concatenated
        when one did not fit."""
        if self.fits and self.array is not None:
            return self.array
        return backend.get_array_module(*parts).concatenate(parts, axis=0)
