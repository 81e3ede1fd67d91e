"""Distributed data-parallel training (minicnn.distributed): communicators, sharding, one
all-reduce per step, and, under ``mpiexec -n 2`` (each run under a subprocess timeout):
equivalence with one process, bit-identical resume, and faults that end every rank."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import find_mpiexec, gpu_unavailable_reason, mnist_root

import minicnn
from minicnn import data
from minicnn.cli.ranks import run_rank
from minicnn.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from minicnn.models import Sequential
from minicnn.training import distributed, evaluation

ROOT = Path(__file__).resolve().parents[1]
MPI_TIMEOUT = 240          # seconds for one mpiexec run; a hang fails the test instead


def run_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")]), OPENBLAS_NUM_THREADS="1")
    for name in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MINICNN_DEBUG"):
        env.pop(name, None)
    return dict(env, **extra)


def mpirun(n: int, args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``mpiexec -n n python ARGS`` under a timeout; returns the finished process."""
    return subprocess.run([find_mpiexec(), "-n", str(n), sys.executable, *args], cwd=cwd,
                          env=run_env(**env), capture_output=True, text=True,
                          timeout=MPI_TIMEOUT)


# =========================================================================== no MPI needed

def test_world_detection_from_the_launchers_environment():
    assert distributed.world_size({}) is None
    assert distributed.world_size({"PMI_SIZE": "4", "PMI_RANK": "1"}) == 4       # MPICH
    assert distributed.world_size({"OMPI_COMM_WORLD_SIZE": "3"}) == 3             # Open MPI
    cores = len(os.sched_getaffinity(0))
    assert distributed.cores_per_rank({}) == 1                   # the launcher did not say
    assert distributed.cores_per_rank({"MPI_LOCALNRANKS": "1"}) == cores
    assert distributed.cores_per_rank({"OMPI_COMM_WORLD_LOCAL_SIZE": "10000"}) == 1


def test_init_without_a_world_is_local_and_imports_no_mpi():
    comm = distributed.init("auto", env={})
    assert isinstance(comm, distributed.LocalComm) and (comm.rank, comm.size) == (0, 1)
    assert isinstance(distributed.init("off", env={"PMI_SIZE": "2"}), distributed.LocalComm)
    assert isinstance(distributed.init("auto", env={"PMI_SIZE": "1"}), distributed.LocalComm)
    code = "import minicnn, minicnn.train, minicnn.cli, sys; print('mpi4py' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=run_env(), capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_local_comm_leaves_buffers_alone():
    comm, buf = distributed.LocalComm(), np.arange(4.0)
    assert comm.allreduce(buf) is buf and comm.broadcast(buf) is buf
    assert buf.tolist() == [0, 1, 2, 3] and comm.allreduce_values([1, 2.5]) == [1.0, 2.5]
    with pytest.raises(ValueError, match="unknown communicator 'tcp'"):
        distributed.init("tcp")


def test_missing_mpi4py_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)           # makes `import mpi4py` fail
    with pytest.raises(distributed.DistributedError,
                       match=r"needs mpi4py.*pip install 'minicnn\[distributed\]'"):
        distributed.init("auto", env={"PMI_SIZE": "2"})
    with pytest.raises(distributed.DistributedError, match="needs mpi4py"):
        distributed.init("mpi")


@pytest.mark.parametrize("env", [{"PMI_SIZE": "2", "PMI_RANK": "0"}, {}])
def test_cli_without_mpi4py_fails_in_one_line(tmp_path, env):
    (tmp_path / "mpi4py").mkdir()
    (tmp_path / "mpi4py" / "__init__.py").write_text("raise ImportError('no mpi4py here')\n")
    extra = [] if env else ["--distributed"]
    out = subprocess.run([sys.executable, "-m", "minicnn", "train", *extra, "--limit", "64",
                          "--epochs", "1", "--out", str(tmp_path / "run")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60,
                         env=dict(run_env(**env), PYTHONPATH=os.pathsep.join(
                             [str(tmp_path), str(ROOT)])))
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("minicnn train: error: distributed training needs mpi4py")
    assert "pip install 'minicnn[distributed]'" in lines[0]
    assert not (tmp_path / "run").exists()


def test_shard_range_covers_everything_once():
    for n, size in [(10, 3), (2, 4), (128, 2), (0, 2)]:
        parts = [distributed.shard_range(n, r, size) for r in range(size)]
        assert parts[0][0] == 0 and parts[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
        assert max(hi - lo for lo, hi in parts) - min(hi - lo for lo, hi in parts) <= 1


def toy_images(n: int, seed: int = 0, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = rng.integers(0, 60, (n, size, size)).astype(np.uint8)
    x[np.arange(n), 2 + 2 * y, 3 + y] = 255                    # a learnable pattern
    return x, y


def test_shards_of_every_batch_put_together_are_the_batch():
    x, y = toy_images(100)
    kwargs = dict(batch_size=32, seed=3, augment=data.RandomShift(1))
    whole = list(data.DataLoader(x, y, **kwargs))
    shards = [list(data.DataLoader(x, y, shard=(r, 2), **kwargs)) for r in range(2)]
    assert len(whole) == 4 and [len(b[0]) for b in shards[0]] == [16, 16, 16, 2]
    for b, (xb, yb) in enumerate(whole):
        assert np.array_equal(np.concatenate([s[b][0] for s in shards]), xb)
        assert np.array_equal(np.concatenate([s[b][1] for s in shards]), yb)


def test_shard_refuses_what_does_not_divide():
    x, y = toy_images(100)
    with pytest.raises(ValueError, match="batch size 32 does not split evenly among 3 ranks; "
                                         "use a multiple of 3"):
        data.DataLoader(x, y, batch_size=32, shard=(0, 3))
    with pytest.raises(ValueError, match="the last batch holds 1 samples, too few for 2"):
        data.DataLoader(x[:65], y[:65], batch_size=32, shard=(1, 2))
    data.DataLoader(x[:65], y[:65], batch_size=32, shard=(1, 2), drop_last=True)
    with pytest.raises(ValueError, match="shard rank 2 is outside 0..1"):
        data.DataLoader(x, y, batch_size=32, shard=(2, 2))


class TwinComm(distributed.Communicator):
    """Pretends there is a second rank holding ``other`` (a function of this rank's buffer)."""

    name = "twin"

    def __init__(self, other=lambda buf: buf.copy()):
        self.rank, self.size, self.other, self.calls = 0, 2, other, 0

    def allreduce(self, buf):
        self.calls += 1
        buf += self.other(buf)
        return buf

    def broadcast(self, buf, root=0):
        return buf

    def allreduce_values(self, values):
        return [2 * float(v) for v in values]


def tiny_model() -> Sequential:
    minicnn.manual_seed(0)
    return Sequential([Conv2D(1, 4, 3), ReLU(), MaxPool2D(2), Flatten(), Dense(4 * 13 * 13, 10)],
                      input_shape=(1, 28, 28))


def test_gradient_sync_makes_one_buffer_and_averages():
    model = tiny_model()
    params = model.parameters()
    sync = distributed.GradientSync(params, TwinComm())
    assert all(np.shares_memory(p.grad, sync.buffer) for p in params)
    for p in params:
        p.grad[...] = 1.0
    params[0].grad = np.full(params[0].shape, 3.0, np.float32)   # replaced: copied back in
    loss, correct = sync(16, np.float32(0.5), np.int64(7))
    # both ranks had 16 samples: the mean gradient is each rank's, the counts add up
    assert np.shares_memory(params[0].grad, sync.buffer)
    assert np.allclose(params[0].grad, 3.0) and np.allclose(params[1].grad, 1.0)
    assert float(loss) == pytest.approx(0.5) and int(correct) == 14 and sync.count == 32
    assert sync.comm.calls == 1 and not sync.stopped
    sync.stop = True
    loss, correct = sync(16, np.float32(0.5), None)
    assert correct is None and sync.stopped


def test_gradient_sync_weights_uneven_shards_by_their_samples():
    model = tiny_model()
    params = model.parameters()
    # the other rank: 8 samples, gradient 0 and loss 0 (so only the counts differ)
    def other(buf):
        out = np.zeros_like(buf)
        out[-2] = 8
        return out
    sync = distributed.GradientSync(params, TwinComm(other))
    for p in params:
        p.grad[...] = 1.0
    loss, correct = sync(24, np.float32(1.0), np.int64(3))
    assert np.allclose(params[1].grad, 24 / 32) and float(loss) == pytest.approx(24 / 32)
    assert sync.count == 32 and int(correct) == 3


def test_gradient_sync_refuses_mixed_dtypes():
    model = tiny_model()
    model.parameters()[0].data = model.parameters()[0].data.astype(np.float64)
    with pytest.raises(TypeError, match="several dtypes"):
        distributed.GradientSync(model.parameters(), TwinComm())


def test_evaluate_sums_over_ranks():
    """With a communicator each rank evaluates its half, and the sums are all-reduced (here
    the twin 'rank' holds an identical half, so the figures are this half's)."""
    model = tiny_model()
    x, y = toy_images(40)
    with pytest.warns(UserWarning, match="no input transform"):     # uint8, never fitted
        half = evaluation.evaluate(model, (x[:20], y[:20]))
    both = evaluation.evaluate(model, (x, y), comm=TwinComm())
    assert both.loss == pytest.approx(half.loss, rel=1e-6) and both.accuracy == half.accuracy


class AbortCalled(Exception):
    pass


class DyingComm(distributed.LocalComm):
    rank, size = 3, 4

    def abort(self, code=1):
        raise AbortCalled(code)


def test_run_rank_prints_one_line_and_aborts(capsys):
    def boom() -> int:
        raise RuntimeError("disk on fire\nsecond line")
    with pytest.raises(AbortCalled, match="1"):
        run_rank(boom, DyingComm(), "minicnn train")
    assert capsys.readouterr().err == ("minicnn train: error: rank 3: RuntimeError: disk on fire "
                                       "second line\n")

    def user_error() -> int:
        raise ValueError("bad option")
    with pytest.raises(AbortCalled):
        run_rank(user_error, DyingComm(), "minicnn train", (ValueError,), grace=0)
    assert capsys.readouterr().err == "minicnn train: error: rank 3: bad option\n"
    assert run_rank(lambda: 0, DyingComm(), "x") == 0


class FakeNccl:
    """Just enough of cupy.cuda.nccl to watch what NCCLComm calls."""

    NCCL_SUM, NCCL_FLOAT32, NCCL_FLOAT64 = "sum", "f32", "f64"
    NCCL_FLOAT16 = NCCL_INT32 = NCCL_INT64 = NCCL_UINT8 = "other"

    def __init__(self):
        self.calls = []

    def get_unique_id(self):
        return (1, 2, 3)

    def NcclCommunicator(self, size, uid, rank):
        self.calls.append(("init", size, uid, rank))
        return self

    def allReduce(self, send, recv, count, dtype, op, stream):
        self.calls.append(("allReduce", send == recv, count, dtype, op, stream))

    def bcast(self, buf, count, dtype, root, stream):
        self.calls.append(("bcast", count, dtype, root))


class FakeArray:
    """A stand-in for a CuPy array (its module's name starts with 'cupy')."""

    def __init__(self, size, dtype):
        self.size, self.dtype = size, np.dtype(dtype)
        self.data = type("Ptr", (), {"ptr": 1234})()


FakeArray.__module__ = "cupy._fake"


def test_nccl_comm_logic_with_a_fake_cupy():
    nccl = FakeNccl()
    used = []
    cuda = type("cuda", (), {
        "nccl": nccl,
        "runtime": type("rt", (), {"getDeviceCount": staticmethod(lambda: 4)}),
        "Device": lambda i: type("D", (), {"use": lambda self: used.append(i)})(),
        "get_current_stream": staticmethod(lambda: type("S", (), {"ptr": 99})())})
    cupy = type("cupy", (), {"cuda": cuda})
    sent = []
    mpi = type("M", (), {"rank": 5, "size": 8, "comm": type("C", (), {
        "bcast": lambda self, obj, root: sent.append(obj) or (7, 7, 7)})()})()
    comm = distributed.NCCLComm(mpi, cupy=cupy, env={"MPI_LOCALRANKID": "6"})
    assert (comm.rank, comm.size, comm.device) == (5, 8, 2) and used == [2]
    assert sent == [None] and nccl.calls[0] == ("init", 8, (7, 7, 7), 5)  # rank 5 got the id
    comm.allreduce(FakeArray(10, "float32"))
    comm.broadcast(FakeArray(3, "float64"))
    assert nccl.calls[1:] == [("allReduce", True, 10, "f32", "sum", 99), ("bcast", 3, "f64", 0)]
    with pytest.raises(TypeError, match="cannot reduce dtype complex64"):
        comm.allreduce(FakeArray(1, "complex64"))


def test_nccl_needs_cupy_and_a_gpu():
    reason = gpu_unavailable_reason()
    if reason is None:
        pytest.skip("a GPU is visible: the NCCL path runs in test_nccl_on_gpus")
    mpi = type("M", (), {"rank": 0, "size": 1})()
    with pytest.raises(distributed.DistributedError, match="NCCL backend needs CuPy"):
        distributed.NCCLComm(mpi)


@pytest.mark.gpu
@pytest.mark.mpi
def test_nccl_on_gpus(tmp_path):
    script = tmp_path / "nccl.py"
    script.write_text(textwrap.dedent("""
        import cupy
        from minicnn.training import distributed
        comm = distributed.init("nccl", backend_name="cupy")
        buf = cupy.full(5, comm.rank + 1.0, dtype=cupy.float32)
        comm.allreduce(buf)
        comm.barrier()
        assert float(buf[0]) == comm.size * (comm.size + 1) / 2, buf
        print("ok", comm.rank)
    """))
    out = mpirun(1, [str(script)], tmp_path)
    assert out.returncode == 0 and "ok 0" in out.stdout, out.stderr


# =========================================================================== under mpiexec -n 2

EQUIVALENCE = """
import json, sys
import numpy as np
import minicnn
from minicnn import data, zoo
from minicnn.training import distributed
from minicnn.training import loop as train
from minicnn.training import SGD

comm = distributed.init()
rng = np.random.default_rng(0)
y = rng.integers(0, 10, 300)
x = rng.integers(0, 60, (300, 28, 28)).astype(np.uint8)
x[np.arange(300), 2 + 2 * y, 3 + y] = 255

def run(dtype, comm):
    minicnn.manual_seed(0)
    model = zoo.build_model("ref-cnn").astype(dtype)
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    scale = lambda xb: xb.astype(dtype) / 255          # the model's dtype
    loader = data.DataLoader(x[:264], y[:264], batch_size=64, seed=0, transform=scale,
                             augment=data.RandomShift(1))  # 5 batches, the last of 8
    val = data.DataLoader(x[264:], y[264:], batch_size=16, shuffle=False, transform=scale)
    history = train.fit(model, loader, 2, opt, val_data=val, progress=False, comm=comm)
    return [p.data.astype(np.float64) for p in model.parameters()], history.records

result = {}
for dtype in ("float64", "float32"):
    mine, records = run(dtype, comm)
    if comm.rank == 0:
        ref, ref_records = run(dtype, None)
        diff = max(float(np.abs(a - b).max()) for a, b in zip(mine, ref))
        rel = max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(mine, ref))
        result[dtype] = {"max_abs": diff, "max_rel": rel, "steps": records[-1]["step"],
                         "records": records, "ref_records": ref_records}
if comm.rank == 0:
    json.dump(result, open(sys.argv[1], "w"))
"""


@pytest.mark.mpi
@pytest.mark.slow
def test_two_ranks_train_like_one_process_with_the_global_batch(tmp_path):
    script = tmp_path / "equivalence.py"
    script.write_text(EQUIVALENCE)
    out = mpirun(2, [str(script), str(tmp_path / "result.json")], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    f64, f32 = result["float64"], result["float32"]
    assert f64["steps"] == 10
    assert f64["max_abs"] < 1e-10, f64["max_abs"]
    assert f32["max_rel"] < 1e-5, f32          # float32 rounding (measured: 1.7e-7)
    for got, want in zip(f64["records"], f64["ref_records"]):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "step"):
            assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key
    print("equivalence:", {k: (v["max_abs"], v["max_rel"]) for k, v in result.items()})


def train_cli(n: int, out: Path, *extra: str, script: Path | None = None,
              **env: str) -> subprocess.CompletedProcess:
    args = [str(script)] if script else ["-m", "minicnn"]
    return mpirun(n, [*args, "train", "--limit", "320", "--test-limit", "200",
                      "--batch-size", "64", "--out", str(out), "--quiet", *extra], out.parent,
                  **env)


def weights(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as archive:
        return {k: archive[k] for k in archive.files if k.startswith(("param/", "optim/"))}


FAULTS = """
import os, signal, sys
from minicnn.cli import commands as cli
from minicnn.training import run as train   # the module whose Run calls train_step
rank = int(os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")))
original, calls = train.train_step, [0]
def faulty(*args, **kwargs):
    calls[0] += 1
    if rank == int(os.environ["FAULT_RANK"]) and calls[0] == int(os.environ["FAULT_STEP"]):
        fault = os.environ["FAULT"]
        if fault == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if fault == "sigint":                     # Ctrl-C reaching this rank alone
            os.kill(os.getpid(), signal.SIGINT)
        else:
            raise RuntimeError("injected fault")
    return original(*args, **kwargs)
train.train_step = faulty
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.mpi
@pytest.mark.slow
def test_cli_two_ranks_resume_is_bit_identical(tmp_path):
    """An uninterrupted 2-epoch run, against 1 epoch then --resume, and against a Ctrl-C
    that reached rank 1 alone mid-epoch (every rank stops at the same step) then --resume
    (bit-identical), and then --resume in one process (equal to float32 rounding). A constant
    lr, so that a 1-epoch run is the first epoch of a 2-epoch one."""
    mnist_root()
    script = tmp_path / "faults.py"
    script.write_text(FAULTS)
    whole = train_cli(2, tmp_path / "whole", "--epochs", "2", "--schedule", "constant")
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert "2 ranks (mpi)" in whole.stderr and "test accuracy" in whole.stdout
    assert whole.stdout.count("test accuracy") == 1          # rank 0 alone prints

    first = train_cli(2, tmp_path / "resumed", "--epochs", "1", "--schedule", "constant")
    assert first.returncode == 0, first.stderr[-3000:]
    again = train_cli(2, tmp_path / "resumed", "--epochs", "2", "--resume")
    assert again.returncode == 0, again.stderr[-3000:]

    stopped = train_cli(2, tmp_path / "stopped", "--epochs", "2", "--schedule", "constant",
                        script=script,
                        FAULT="sigint", FAULT_RANK="1", FAULT_STEP="3")
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "interrupted at epoch 1, step 4 of 5" in stopped.stderr   # asked during step 3
    assert stopped.stderr.count("interrupted at") == 1
    shutil.copytree(tmp_path / "stopped", tmp_path / "alone")
    resumed = train_cli(2, tmp_path / "stopped", "--epochs", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    alone = train_cli(1, tmp_path / "alone", "--epochs", "2", "--resume")
    assert alone.returncode == 0, alone.stderr[-3000:]

    want = weights(tmp_path / "whole" / "model.npz")
    for run in ("resumed", "stopped"):
        got = weights(tmp_path / run / "model.npz")
        assert got.keys() == want.keys()
        assert all(np.array_equal(got[k], want[k]) for k in want), run
    got = weights(tmp_path / "alone" / "model.npz")
    rel = max(float(np.abs(got[k] - want[k]).max() / np.abs(want[k]).max()) for k in want)
    print(f"resumed with 1 rank instead of 2: max relative difference {rel:.2e}")
    assert rel < 1e-4
    lines = (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    resumed_lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(a)["val_acc"] for a in resumed_lines] == \
        [json.loads(a)["val_acc"] for a in lines]


@pytest.mark.mpi
@pytest.mark.parametrize("fault", ["raise", "kill"])
@pytest.mark.slow
def test_a_failing_rank_ends_every_rank(tmp_path, fault):
    mnist_root()
    script = tmp_path / "faults.py"
    script.write_text(FAULTS)
    started = time.monotonic()
    out = train_cli(2, tmp_path / "run", "--epochs", "2", script=script, FAULT=fault,
                    FAULT_RANK="1", FAULT_STEP="8")       # in epoch 2: epoch 1 was saved
    took = time.monotonic() - started
    assert out.returncode != 0 and took < 60, (out.returncode, took)
    if fault == "raise":
        ours = [line for line in out.stderr.splitlines() if line.startswith("minicnn")]
        assert ours == ["minicnn train: error: rank 1: RuntimeError: injected fault"], out.stderr
    run = tmp_path / "run"
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    assert not (run / "model.npz").exists()
    ckpt = minicnn.checkpoint.load_checkpoint(run / "last.npz")     # whole, from epoch 1
    assert ckpt.meta["training"]["epoch"] == 1 and ckpt.meta["ranks"] == 2


@pytest.mark.mpi
def test_a_batch_that_does_not_split_is_refused_in_one_line(tmp_path):
    mnist_root()
    out = train_cli(2, tmp_path / "run", "--batch-size", "63")
    assert out.returncode != 0
    ours = [line for line in out.stderr.splitlines() if line.startswith("minicnn")]
    assert ours and ours[0] == ("minicnn train: error: rank 0: --batch-size 63 does not split "
                                "evenly among 2 ranks; use a multiple of 2"), out.stderr
    assert len(ours) == 1 or ours[1] == ours[0].replace("rank 0", "rank 1"), out.stderr
