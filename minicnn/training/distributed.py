"""Data-parallel training across processes: MPI on CPUs, NCCL on GPUs.

Launched as ``mpiexec -n N minicnn train ...`` (or a script that calls ``fit(..., comm=
distributed.init())``), each process (a *rank*) holds the whole model and trains on its shard
of every global batch. One step is::

    forward + backward on the rank's B/N samples     (the loss averages over those B/N)
    one all-reduce of ONE flat buffer: every gradient scaled by n_rank, and the loss,
        correct count, sample count and a stop flag ("Ctrl-C was pressed here")
    gradient /= the summed sample count              (the mean over the B samples)
    optimizer.step()                                 (the same update on every rank)

so N ranks with global batch B follow the same weights as one process with batch B (up to the
order of float additions). The parameters' ``grad`` arrays are views into that buffer, so
backward adds straight into it and a step costs one collective, not one per parameter.

Three communicators share one small interface (rank, size, ``allreduce`` of a flat buffer,
summed in place; ``broadcast`` from rank 0; ``barrier``; ``abort``): ``LocalComm`` (one process,
every call a no-op), ``MPIComm`` (mpi4py, host buffers) and ``NCCLComm`` (CuPy's NCCL, device
buffers, the unique id sent over MPI). ``init()`` picks one: a world started by ``mpiexec``
(MPICH sets PMI_RANK/PMI_SIZE, Open MPI OMPI_COMM_WORLD_SIZE) gets MPI on the NumPy backend and
NCCL on CuPy. mpi4py is imported only then, never on ``import minicnn``.

BatchNorm2D normalises with each rank's own batch statistics (as PyTorch's DDP without
SyncBatchNorm); its running statistics are rank 0's, sent to every rank before each evaluation.
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Mapping
from typing import Any

from minicnn.core import backend

__all__ = ["DistributedError", "Communicator", "LocalComm", "MPIComm", "NCCLComm", "init",
           "world_size", "shard_range", "GradientSync", "broadcast_parameters",
           "broadcast_state", "cores_per_rank", "INSTALL_HINT"]

INSTALL_HINT = "pip install 'minicnn[distributed]' (mpi4py and MPICH's mpiexec)"

_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_LOCAL_SIZE_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE")
_LOCAL_RANK_VARS = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK")


class DistributedError(RuntimeError):
    """Distributed training cannot start (mpi4py missing, no GPU for NCCL, ...); one line."""


def _env_int(env: Mapping[str, str], names: Iterable[str]) -> int | None:
    for name in names:
        value = env.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None


def world_size(env: Mapping[str, str] | None = None) -> int | None:
    """The number of processes mpiexec started, read from the environment it sets (None when
    this process was not started by an MPI launcher)."""
    return _env_int(os.environ if env is None else env, _SIZE_VARS)


def shard_range(n: int, rank: int, size: int) -> tuple[int, int]:
    """[lo, hi) of rank's part when n items are split into ``size`` nearly equal parts."""
    return n * rank // size, n * (rank + 1) // size


def cores_per_rank(env: Mapping[str, str] | None = None) -> int:
    """Cores each rank on this machine may use: the cores available divided by the ranks
    mpiexec started here (1 when the launcher does not say)."""
    env = os.environ if env is None else env
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    local = _env_int(env, _LOCAL_SIZE_VARS)
    return 1 if not local else max(1, (cores or 1) // local)


# --------------------------------------------------------------------------- communicators

class Communicator:
    """What every backend provides; a rank calls each collective in the same order as the
    others. Buffers are 1-D contiguous arrays, reduced or overwritten in place."""

    name = "base"
    rank: int = 0
    size: int = 1

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def allreduce(self, buf: Any) -> Any:
        """Replace ``buf`` by the element-wise sum of every rank's ``buf``; returns it."""
        raise NotImplementedError

    def broadcast(self, buf: Any, root: int = 0) -> Any:
        """Overwrite ``buf`` with rank ``root``'s ``buf``; returns it."""
        raise NotImplementedError

    def allreduce_values(self, values: list[float]) -> list[float]:
        """The element-wise sums of a few host numbers over the ranks (metrics)."""
        raise NotImplementedError

    def barrier(self) -> None:
        """Return once every rank has called it."""
        raise NotImplementedError

    def abort(self, code: int = 1) -> None:
        """End every rank's process now with exit status ``code``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"


class LocalComm(Communicator):
    """One process: sums and broadcasts leave buffers as they are."""

    name = "local"

    def allreduce(self, buf: Any) -> Any:
        return buf

    def broadcast(self, buf: Any, root: int = 0) -> Any:
        return buf

    def allreduce_values(self, values: list[float]) -> list[float]:
        return [float(v) for v in values]

    def barrier(self) -> None:
        pass

    def abort(self, code: int = 1) -> None:
        os._exit(code)


def _import_mpi() -> Any:
    """``mpi4py.MPI`` (initialising MPI), or DistributedError saying how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise DistributedError(f"distributed training needs mpi4py, which is not installed "
                               f"({exc}); {INSTALL_HINT}") from None
    return MPI


class MPIComm(Communicator):
    """MPI through mpi4py on host (NumPy) buffers; a CuPy buffer is copied to the host and
    back. ``comm`` defaults to ``MPI.COMM_WORLD``."""

    name = "mpi"

    def __init__(self, comm: Any = None):
        self.MPI = _import_mpi()
        self.comm = comm if comm is not None else self.MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()

    def allreduce(self, buf: Any) -> Any:
        if backend.is_cupy_array(buf):
            host = backend.to_numpy(buf)
            self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
            buf[...] = backend.get_array_module(buf).asarray(host)
        else:
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return buf

    def broadcast(self, buf: Any, root: int = 0) -> Any:
        if backend.is_cupy_array(buf):
            host = backend.to_numpy(buf)
            self.comm.Bcast(host, root=root)
            buf[...] = backend.get_array_module(buf).asarray(host)
        else:
            self.comm.Bcast(buf, root=root)
        return buf

    def allreduce_values(self, values: list[float]) -> list[float]:
        host = backend.get_module("numpy").asarray(values, dtype="float64")
        self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
        return host.tolist()

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        self.comm.Abort(code)


_NCCL_TYPES = {"float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64",
               "int32": "NCCL_INT32", "int64": "NCCL_INT64", "uint8": "NCCL_UINT8"}


class NCCLComm(Communicator):
    """NCCL through ``cupy.cuda.nccl`` on device (CuPy) buffers; a NumPy buffer goes over MPI.

    Rank r uses GPU ``local_rank % device_count`` (local_rank: r's index among the ranks on its
    machine, as the launcher reports it, else r). rank 0 draws NCCL's unique id and sends it to
    the others over ``mpi``; host numbers, barriers and aborts also go over ``mpi``.
    """

    name = "nccl"

    def __init__(self, mpi: MPIComm, cupy: Any = None, env: Mapping[str, str] | None = None):
        if cupy is None:
            try:
                cupy = backend.get_module("cupy")
                importlib.import_module("cupy.cuda.nccl")     # NCCL is an optional part
            except (backend.BackendError, ImportError) as exc:
                raise DistributedError(f"the NCCL backend needs CuPy with NCCL and a GPU: {exc}"
                                       ) from None
        self.mpi, self.cupy = mpi, cupy
        self.nccl = cupy.cuda.nccl
        self.rank, self.size = mpi.rank, mpi.size
        env = os.environ if env is None else env
        local = _env_int(env, _LOCAL_RANK_VARS)
        self.device = (self.rank if local is None else local) % \
            cupy.cuda.runtime.getDeviceCount()
        cupy.cuda.Device(self.device).use()
        uid = self.nccl.get_unique_id() if self.rank == 0 else None
        uid = mpi.comm.bcast(uid, root=0)
        self.comm = self.nccl.NcclCommunicator(self.size, uid, self.rank)

    def _type(self, buf: Any) -> Any:
        name = _NCCL_TYPES.get(str(buf.dtype))
        if name is None:
            raise TypeError(f"NCCLComm: cannot reduce dtype {buf.dtype}")
        return getattr(self.nccl, name)

    def _stream(self) -> int:
        return self.cupy.cuda.get_current_stream().ptr

    def allreduce(self, buf: Any) -> Any:
        if not backend.is_cupy_array(buf):
            return self.mpi.allreduce(buf)
        self.comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, self._type(buf),
                            self.nccl.NCCL_SUM, self._stream())
        return buf

    def broadcast(self, buf: Any, root: int = 0) -> Any:
        if not backend.is_cupy_array(buf):
            return self.mpi.broadcast(buf, root)
        self.comm.bcast(buf.data.ptr, buf.size, self._type(buf), root, self._stream())
        return buf

    def allreduce_values(self, values: list[float]) -> list[float]:
        return self.mpi.allreduce_values(values)

    def barrier(self) -> None:
        self.cupy.cuda.get_current_stream().synchronize()
        self.mpi.barrier()

    def abort(self, code: int = 1) -> None:
        try:
            self.comm.abort()
        finally:
            self.mpi.abort(code)


def init(kind: str | None = "auto", backend_name: str | None = None,
         env: Mapping[str, str] | None = None) -> Communicator:
    """The communicator for this process.

    kind: "auto" (an MPI world of several processes detected from the environment: as "on";
    otherwise "local"), "on" (MPI even when none is detected: "nccl" when ``backend_name``
    (default: the active backend) is "cupy", else "mpi"), "mpi", "nccl", or "local"/"off"/None.
    Raises DistributedError (one line, with the install command) when mpi4py is missing.
    """
    backend_name = backend_name or backend.get_backend()
    if kind in (None, "local", "off"):
        return LocalComm()
    if kind == "auto":
        size = world_size(env)
        if size is None or size < 2:
            return LocalComm()
        kind = "on"
    if kind == "on":
        kind = "nccl" if backend_name == "cupy" else "mpi"
    if kind == "mpi":
        return MPIComm()
    if kind == "nccl":
        return NCCLComm(MPIComm(), env=env)
    raise ValueError(f"unknown communicator {kind!r}: expected auto, on, mpi, nccl or off")


# --------------------------------------------------------------------------- training helpers

def _flat_dtype(arrays: list[Any], who: str) -> Any:
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) != 1:
        raise TypeError(f"{who}: parameters of several dtypes ({sorted(map(str, dtypes))}); "
                        "convert the model with model.astype(...)")
    return dtypes.pop()


def broadcast_parameters(params: list[Any], comm: Communicator, root: int = 0) -> None:
    """Overwrite every parameter's data with rank ``root``'s (packed into one buffer)."""
    if comm.size < 2 or not params:
        return
    _flat_dtype([p.data for p in params], "broadcast_parameters")
    xp = backend.get_array_module(params[0].data)
    flat = xp.concatenate([p.data.ravel() for p in params])
    comm.broadcast(flat, root)
    offset = 0
    for p in params:
        p.data[...] = flat[offset:offset + p.size].reshape(p.shape)
        offset += p.size


def broadcast_state(model: Any, comm: Communicator, root: int = 0) -> None:
    """Overwrite the non-trained state arrays (BatchNorm running statistics) of every layer of
    ``model`` with rank ``root``'s."""
    if comm.size < 2:
        return
    for _, layer in model.named_layers():
        state = layer.state_arrays()
        if state:
            xp = backend.get_array_module(*state.values())
            layer.load_state_arrays({k: comm.broadcast(xp.ascontiguousarray(v).ravel(), root)
                                     .reshape(v.shape) for k, v in state.items()})


class GradientSync:
    """Sums the parameters' gradients of one step over the ranks, in one all-reduce.

    ``sync(n, loss, correct)`` after backward (n: this rank's samples, loss: their mean,
    correct: their correct count or None) makes every ``p.grad`` the mean gradient over all
    ranks' samples and returns (the mean loss over all samples, their correct count or None);
    ``count`` is then the step's global sample count and ``stopped`` whether any rank set
    ``stop``. The gradients live in one buffer (each ``p.grad`` a view into it); a parameter
    whose ``grad`` was replaced is copied in and re-pointed at its view.
    """

    _EXTRA = 4                     # loss * n, correct, n, stop

    def __init__(self, params: list[Any], comm: Communicator):
        if not params:
            raise ValueError("GradientSync: no parameters")
        self.params, self.comm = list(params), comm
        dtype = _flat_dtype([p.data for p in self.params], "GradientSync")
        xp = backend.get_array_module(self.params[0].data)
        total = sum(p.size for p in self.params)
        self.buffer = xp.zeros(total + self._EXTRA, dtype=dtype)
        self.grads = self.buffer[:total]
        self.views, offset = [], 0
        for p in self.params:
            self.views.append(self.buffer[offset:offset + p.size].reshape(p.shape))
            offset += p.size
        self._bind()
        self.stop, self.stopped, self.count = False, False, 0

    def _bind(self) -> None:
        for p, view in zip(self.params, self.views):
            if p.grad is not view:
                view[...] = p.grad
                p.grad = view

    def __call__(self, n: int, loss: Any, correct: Any) -> tuple[Any, Any]:
        self._bind()
        buf, extra = self.buffer, self.buffer[-self._EXTRA:]
        self.grads *= buf.dtype.type(n)
        extra[0] = loss * n
        extra[1] = 0 if correct is None else correct
        extra[2], extra[3] = n, float(bool(self.stop))
        self.comm.allreduce(buf)
        count, stop = backend.to_numpy(extra[2:]).tolist()      # 16 bytes to the host
        self.count, self.stopped = int(round(count)), stop > 0
        self.grads *= buf.dtype.type(1.0 / count)
        mean_loss = extra[0] / buf.dtype.type(count)
        return mean_loss, None if correct is None else extra[1].copy()
