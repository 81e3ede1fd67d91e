"""Data parallelism on the CPU: each step splits the batch among replicas of the model, one per
core, run in threads.

NumPy runs an element-wise operation on one core, and OpenBLAS's own threads busy-wait between
matrix multiplies, holding the other cores. So on the NumPy backend a training step is faster
when BLAS is single-threaded and each core runs the *whole* forward and backward of a slice of
the batch: the replicas (the model itself and copies of it) share the parameter arrays
(read-only during the step) and keep their own activations and gradients; the copies' gradients
are added into the model's afterwards, which gives exactly the full batch's gradient. NumPy releases the GIL inside its loops and BLAS calls, so
the threads really run in parallel.

Used by ``minicnn.train.fit`` when it can set OpenBLAS's thread count (otherwise its threads
would fight the replicas' threads) and every layer is one of minicnn's own without state or
randomness (BatchNorm2D's running statistics and Dropout's masks would depend on the split).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from minicnn import backend, init
from minicnn.blas import set_blas_threads

def can_split(model: Any) -> bool:
    """True when splitting the batch cannot change the model's results: every layer is one of
    minicnn's own, none keeps state or draws random numbers (a layer of yours might, and might
    not be safe to run in two threads at once, so models with one are not split)."""
    from minicnn.layers import BatchNorm2D, Dropout
    for layer in model.layers:
        if hasattr(layer, "layers"):                 # a model inside the model
            if not can_split(layer):
                return False
        elif isinstance(layer, BatchNorm2D | Dropout) or \
                not type(layer).__module__.startswith("minicnn."):
            return False
    return True


class DataParallel:
    """``forward`` / ``backward`` of ``model`` on slices of the batch, one replica per thread.

    Everything else (parameters, config, modes) is the model's own. Gradients are summed into
    the model's parameters, so an optimizer over ``model.parameters()`` works unchanged.
    """

    def __init__(self, model: Any, workers: int):
        from minicnn.models import layer_from_config
        self.model, self.workers = model, workers
        state = init.get_rng_state()        # building replicas must not move the global RNG
        entry = {"class": type(model).__name__, "config": model.config()}
        # the model itself is the first replica: its gradients need no copying
        self.replicas = [model] + [layer_from_config(entry) for _ in range(workers - 1)]
        init.set_rng_state(state)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="minicnn")
        self._slices: list[slice] = []
        self.blas_threads_before: int | None = None   # restored by close()

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.model, attribute)

    def share_parameters(self) -> None:
        """Point every replica's parameters at the model's arrays (cheap when they already do)."""
        params = self.model.parameters()
        for replica in self.replicas[1:]:
            for mine, theirs in zip(replica.parameters(), params):
                if mine.data is not theirs.data:
                    mine.data = theirs.data
                    mine.grad = backend.module_of(theirs.data).zeros_like(theirs.data)

    def _map(self, fn: Any) -> list[Any]:
        jobs = [self._pool.submit(fn, r, s) for r, s in zip(self.replicas, self._slices)]
        return [job.result() for job in jobs]

    def forward(self, x: Any, training: bool | None = None, check: bool = True) -> Any:
        """The model's output for x (N, ...), computed on up to ``workers`` slices of N."""
        self.share_parameters()
        n, parts = x.shape[0], min(self.workers, max(1, x.shape[0]))
        bounds = [n * k // parts for k in range(parts + 1)]
        self._slices = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
        if training is not None:
            self.model.train(training)
        outs = self._map(lambda r, s: r.forward(x[s], training=training, check=check))
        return backend.xp.concatenate(outs, axis=0)

    def backward(self, grad_out: Any, input_grad: bool = True) -> Any:
        """Back-propagate each slice in its replica, then add the replicas' parameter
        gradients into the model's (the sum is the full batch's gradient)."""
        def backward(replica: Any, rows: slice) -> Any:
            if replica is not self.model:            # the model's own gradients accumulate
                replica.zero_grad()
            return replica.backward(grad_out[rows], input_grad=input_grad)

        grads = self._map(backward)
        others = [replica.parameters() for replica in self.replicas[1:len(self._slices)]]
        for k, param in enumerate(self.model.parameters()):
            for params in others:
                param.grad += params[k].grad
        return backend.xp.concatenate(grads, axis=0) if input_grad else None

    def train(self, mode: bool = True) -> "DataParallel":
        self.model.train(mode)
        for replica in self.replicas:
            replica.train(mode)
        return self

    def eval(self) -> "DataParallel":
        return self.train(False)

    def clear_cache(self) -> None:
        for replica in self.replicas:
            replica.clear_cache()

    def close(self) -> None:
        """Stop the threads and give OpenBLAS back the thread count it had."""
        self._pool.shutdown()
        if self.blas_threads_before is not None:
            set_blas_threads(self.blas_threads_before)


def default_workers() -> int:
    """Cores to split a NumPy training step across: ``MINICNN_WORKERS`` if set, else the
    cores this process may use (at most 8); 1 on the GPU backend."""
    if backend.get_backend() != "numpy":
        return 1
    if os.environ.get("MINICNN_WORKERS"):
        return max(1, int(os.environ["MINICNN_WORKERS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, 8))


MIN_SLICE = 16
"""Fewest samples per replica for splitting to pay. Measured on 2 cores for the reference CNN,
each setting in its own process (whole batch with 2 OpenBLAS threads against split in two,
seconds per epoch): batch 16, 13.9 against 14.7; batch 32, 16.8 against 13.7; batch 64, 14.4
against 10.9."""


def data_parallel(model: Any, workers: int | None = None, batch_size: int | None = None) -> Any:
    """``DataParallel(model, workers)`` with OpenBLAS made single-threaded, when that is
    possible and useful (see the module docstring, and ``MIN_SLICE`` for ``batch_size``);
    otherwise ``model`` itself."""
    workers = default_workers() if workers is None else workers
    if batch_size is not None:
        workers = min(workers, batch_size // MIN_SLICE)
    if workers < 2 or backend.get_backend() != "numpy" or not can_split(model):
        return model
    previous = set_blas_threads(1)
    if previous is None:
        return model
    net = DataParallel(model, workers)
    net.blas_threads_before = previous
    return net
