"""Training tools: schedules (warm-up, one-cycle, plateau), gradient clipping and callbacks,
each checked against PyTorch's namesake when installed, and resumable bit for bit in fit."""
from __future__ import annotations

import csv
import struct

import numpy as np
import pytest

import minicnn
from minicnn import training
from minicnn.data import DataLoader
from minicnn.layers import Conv2D, Dense, Flatten, MaxPool2D, Parameter, ReLU
from minicnn.models import Sequential
from minicnn.training.callbacks import BestCheckpoint, CSVLogger, EarlyStopping, TensorBoard
from minicnn.training.clipping import GradientClip, clip_grad_norm, clip_grad_value
from minicnn.training.schedules import (
    CosineLR,
    OneCycleLR,
    ReduceLROnPlateau,
    WarmupLR,
    make_schedule,
)

pytestmark = pytest.mark.usefixtures("seeded")


def small_model() -> Sequential:
    return Sequential([Conv2D(1, 4, 3), ReLU(), MaxPool2D(2), Flatten(), Dense(100, 3)],
                      input_shape=(1, 12, 12))


def toy_data(n: int = 96, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.standard_normal((n, 1, 12, 12)).astype(np.float32)
    x[np.arange(n), 0, 4 * y, 4 * y] += 4.0                  # a learnable pattern
    return x, y


def _torch_lrs(torch, make, steps: int, lr: float) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sched = make(opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


# =========================================================================== schedules

@pytest.mark.parametrize("total,pct", [(50, 0.3), (17, 0.25), (100, 0.5)])
def test_one_cycle_matches_pytorch(total, pct):
    torch = pytest.importorskip("torch")
    ours = OneCycleLR(0.1, total, pct_start=pct, div_factor=10, final_div_factor=100)
    want = _torch_lrs(torch, lambda o: torch.optim.lr_scheduler.OneCycleLR(
        o, 0.1, total_steps=total, pct_start=pct, div_factor=10, final_div_factor=100,
        cycle_momentum=False), total, 0.1)
    np.testing.assert_allclose([ours(s) for s in range(total)], want, rtol=1e-12)


def test_one_cycle_shape_without_torch():
    s = OneCycleLR(1.0, 100, pct_start=0.3)
    lrs = [s(k) for k in range(100)]
    assert lrs[0] == pytest.approx(1 / 25) and max(lrs) == pytest.approx(1.0)
    assert int(np.argmax(lrs)) == 29 and lrs[-1] == pytest.approx(1 / 25 / 1e4)
    assert all(a <= b for a, b in zip(lrs[:29], lrs[1:30]))
    assert all(a >= b for a, b in zip(lrs[29:], lrs[30:]))


@pytest.mark.parametrize("warmup,start", [(5, 0.1), (1, 0.5), (10, 1.0 / 3)])
def test_warmup_then_cosine_matches_pytorch_sequential(warmup, start):
    torch = pytest.importorskip("torch")
    total = 40
    ours = WarmupLR(CosineLR(0.2, total - warmup), warmup, start_factor=start)
    sch = torch.optim.lr_scheduler

    def make(o):
        return sch.SequentialLR(o, [sch.LinearLR(o, start_factor=start, total_iters=warmup),
                                    sch.CosineAnnealingLR(o, T_max=total - warmup)],
                                milestones=[warmup])
    want = _torch_lrs(torch, make, total, 0.2)
    np.testing.assert_allclose([ours(s) for s in range(total)], want, rtol=1e-9, atol=1e-15)


def test_warmup_ramps_linearly_before_the_schedule():
    s = WarmupLR(lambda step: 1.0 - step / 100, 4, start_factor=0.2)
    assert [s(k) for k in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 0.99])


VAL_LOSSES = [1.0, 0.9, 0.95, 0.91, 0.89, 0.9, 0.9, 0.9, 0.7, 0.8, 0.8, 0.8, 0.8, 0.8]


@pytest.mark.parametrize("kw", [dict(patience=1), dict(patience=2, factor=0.5, cooldown=1),
                                dict(patience=0, min_lr=0.02, threshold=0.05)])
def test_plateau_matches_pytorch(kw):
    torch = pytest.importorskip("torch")
    ours = ReduceLROnPlateau(0.1, **kw)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kw)
    for v in VAL_LOSSES:
        ours.on_epoch_end({"val_loss": v})
        theirs.step(v)
        assert ours(0) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)


def test_plateau_state_round_trip_and_missing_validation():
    a = ReduceLROnPlateau(0.1, patience=1)
    for v in VAL_LOSSES[:5]:
        a.on_epoch_end({"val_loss": v})
    b = ReduceLROnPlateau(0.1, patience=1)
    b.load_state_dict(a.state_dict())
    for v in VAL_LOSSES[5:]:
        a.on_epoch_end({"val_loss": v})
        b.on_epoch_end({"val_loss": v})
        assert a(0) == b(0)
    with pytest.raises(ValueError, match="ReduceLROnPlateau watches val_loss, which the epoch's "
                                         "record lacks: give fit val_data"):
        a.on_epoch_end({"epoch": 1, "train_loss": 0.3})


@pytest.mark.parametrize("name", ["cosine", "step", "constant", "onecycle", "plateau"])
def test_make_schedule_with_and_without_warmup(name):
    warm, after = make_schedule(name, 0.1, 100, warmup_steps=10), make_schedule(name, 0.1, 90)
    assert isinstance(warm, WarmupLR) and not isinstance(make_schedule(name, 0.1, 100), WarmupLR)
    assert warm(0) == pytest.approx(0.1 * after(0)) and warm(5) == pytest.approx(0.55 * after(0))
    assert [warm(10 + k) for k in range(0, 90, 7)] == pytest.approx(
        [after(k) for k in range(0, 90, 7)])


@pytest.mark.parametrize("make,message", [
    (lambda: OneCycleLR(0.1, 1), "OneCycleLR: expected total_steps >= 2"),
    (lambda: WarmupLR(CosineLR(0.1, 5), 0), "WarmupLR: expected warmup_steps >= 1"),
    (lambda: ReduceLROnPlateau(0.1, factor=1.5), "ReduceLROnPlateau: expected 0 < factor < 1"),
    (lambda: make_schedule("cosine", 0.1, 10, warmup_steps=10), "warm-up of 10 steps"),
    (lambda: make_schedule("linear", 0.1, 10), "unknown schedule 'linear'"),
])
def test_bad_schedule_arguments(make, message):
    with pytest.raises(ValueError) as e:
        make()
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


# =========================================================================== clipping

def _params(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    ps = [Parameter(rng.standard_normal(s).astype(dtype)) for s in ((3, 4), (5,), (2, 2, 2))]
    for p in ps:
        p.grad += rng.standard_normal(p.shape).astype(dtype) * 3
    return ps


@pytest.mark.parametrize("max_norm", [0.5, 3.0, 1e6])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grad_norm_matches_pytorch(max_norm, dtype):
    torch = pytest.importorskip("torch")
    ps = _params(dtype=dtype)
    ts = [torch.nn.Parameter(torch.tensor(p.data)) for p in ps]
    for t, p in zip(ts, ps):
        t.grad = torch.tensor(p.grad.copy())
    norm = clip_grad_norm(ps, max_norm)
    want = torch.nn.utils.clip_grad_norm_(ts, max_norm)
    assert norm.dtype == dtype and float(norm) == pytest.approx(float(want), rel=1e-6)
    for p, t in zip(ps, ts):
        assert p.grad.dtype == dtype
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-6 if dtype == np.float32
                                   else 1e-12)


def test_clip_grad_norm_is_the_definition_and_value_clamps():
    ps = _params(1)
    flat = np.concatenate([p.grad.ravel() for p in ps])
    norm = float(np.sqrt((flat ** 2).sum()))
    before = [p.grad.copy() for p in ps]
    assert float(clip_grad_norm(ps, 1.0)) == pytest.approx(norm)
    for p, b in zip(ps, before):
        np.testing.assert_allclose(p.grad, b * (1.0 / (norm + 1e-6)))
    clip_grad_value(ps, 0.01)
    assert max(float(np.abs(p.grad).max()) for p in ps) <= 0.01


def test_gradient_clip_keeps_norm_figures_and_refuses_bad_values():
    clip = GradientClip(norm=1.0)
    ps = _params(2)
    norms = [float(clip(ps)) for _ in range(3)]       # the 2nd and 3rd see clipped grads
    total, peak, count = clip.drain()
    assert count == 3 and total == pytest.approx(sum(norms)) and peak == max(norms)
    assert clip.drain() == (0.0, 0.0, 0)
    with pytest.raises(ValueError, match="fit: clip_norm must be a number > 0, got -1"):
        GradientClip(norm=-1)


def test_fit_with_clip_norm_is_the_hand_loop_with_clipping_and_logs_the_norm():
    x, y = toy_data()
    minicnn.manual_seed(0)
    a = small_model()
    b = a.replica()
    for p, q in zip(b.parameters(), a.parameters()):
        p.data = q.data.copy()
    opt = training.SGD(a.parameters(), 0.1)
    loader = DataLoader(x, y, batch_size=32, shuffle=False)
    history = training.fit(a, loader, 1, opt, clip_norm=0.5, progress=False, verbose=False)
    assert 0 < history[0]["grad_norm"] <= history[0]["grad_norm_max"]
    opt_b, loss = training.SGD(b.parameters(), 0.1), training.SoftmaxCrossEntropy()
    norms = []
    for xb, yb in DataLoader(x, y, batch_size=32, shuffle=False):
        opt_b.zero_grad()
        loss.forward(b.forward(xb, training=True), yb)
        b.backward(loss.backward())
        norms.append(float(clip_grad_norm(b.parameters(), 0.5)))
        opt_b.step()
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    assert history[0]["grad_norm"] == pytest.approx(np.mean(norms), rel=1e-6)
    assert history[0]["grad_norm_max"] == pytest.approx(max(norms), rel=1e-6)


# =========================================================================== fit, resumed

def _fit(tmp_path, epochs, resume=False, callbacks=()):
    tmp_path.mkdir(exist_ok=True)
    x, y = toy_data()
    minicnn.manual_seed(1)
    model = small_model()
    opt = training.SGD(model.parameters(), 0.2, momentum=0.9)
    schedule = WarmupLR(ReduceLROnPlateau(0.2, patience=0, factor=0.5, threshold=0.5), 2)
    history = training.fit(model, (x[:64], y[:64]), epochs, opt, val_data=(x[64:], y[64:]),
                           schedule=schedule, batch_size=16, seed=3, clip_norm=1.0,
                           checkpoint=tmp_path / "run.npz", resume=resume,
                           callbacks=callbacks, progress=False, verbose=False)
    return model, history, schedule


def test_resumed_run_with_plateau_warmup_and_clipping_is_bit_identical(tmp_path):
    whole, h_whole, s_whole = _fit(tmp_path / "a", 4)
    _fit(tmp_path / "b", 2)
    part, h_part, s_part = _fit(tmp_path / "b", 4, resume=True)
    for p, q in zip(whole.parameters(), part.parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    keys = ("train_loss", "val_loss", "lr", "grad_norm", "grad_norm_max")
    assert [[r[k] for k in keys] for r in h_whole] == [[r[k] for k in keys] for r in h_part]
    assert len({r["lr"] for r in h_whole}) > 1         # the plateau did reduce the lr
    assert s_whole.state_dict() == s_part.state_dict()


# =========================================================================== callbacks

def test_early_stopping_best_checkpoint_and_csv_logger(tmp_path):
    x, y = toy_data()
    minicnn.manual_seed(2)
    model = small_model()
    opt = training.SGD(model.parameters(), 1e-9)       # no progress: val loss flat
    calls = []

    class Spy(training.callbacks.Callback):
        def on_step_end(self, step):
            calls.append(step)

    history = training.fit(
        model, (x, y), 10, opt, val_data=(x[:32], y[:32]), batch_size=32, seed=0,
        progress=False, verbose=False,
        callbacks=[EarlyStopping(2, min_delta=0.1), BestCheckpoint(tmp_path / "best.npz"),
                   CSVLogger(tmp_path / "log.csv"), Spy()])
    assert history.stopped == "early stop" and len(history) == 3
    assert calls == list(range(1, 3 * 3 + 1))
    from minicnn.saving.checkpoint import load_checkpoint
    assert load_checkpoint(tmp_path / "best.npz").meta["best_epoch"] == 1
    rows = list(csv.DictReader((tmp_path / "log.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[2]["val_loss"]) == pytest.approx(history[2]["val_loss"])
    keras = history.history
    assert keras["loss"] == history["train_loss"] and keras["val_accuracy"] == history["val_acc"]
    assert keras["learning_rate"] == history["lr"] and "epoch" not in keras


def test_callbacks_refuse_bad_arguments_and_missing_metrics():
    with pytest.raises(ValueError, match="EarlyStopping: patience must be an int >= 1"):
        EarlyStopping(0)
    with pytest.raises(ValueError, match="BestCheckpoint: mode must be 'min' or 'max'"):
        BestCheckpoint("x.npz", mode="lowest")
    x, y = toy_data(32)
    model = small_model()
    with pytest.raises(ValueError, match="EarlyStopping watches val_loss, which the epoch's "
                                         "record lacks"):
        training.fit(model, (x, y), 1, training.SGD(model.parameters(), 0.1),
                     callbacks=[EarlyStopping(1)], progress=False, verbose=False)


def _events(path):
    """(tag, step, value) of every scalar in a TensorBoard event file (TFRecord framing)."""
    from tensorboardX.proto import event_pb2
    data, out, i = path.read_bytes(), [], 0
    while i < len(data):
        (length,) = struct.unpack("<Q", data[i:i + 8])
        event = event_pb2.Event.FromString(data[i + 12:i + 12 + length])
        i += 12 + length + 4
        for v in event.summary.value:
            out.append((v.tag, event.step, v.simple_value))
    return out


def test_tensorboard_writes_each_epoch_record(tmp_path):
    pytest.importorskip("tensorboardX")
    x, y = toy_data(64)
    model = small_model()
    board = TensorBoard(tmp_path / "tb")
    history = training.fit(model, (x, y), 2, training.SGD(model.parameters(), 0.1),
                           batch_size=32, callbacks=[board], progress=False, verbose=False)
    board.close()
    (event_file,) = (tmp_path / "tb").iterdir()
    scalars = _events(event_file)
    losses = [(s, v) for t, s, v in scalars if t == "train_loss"]
    assert [s for s, _ in losses] == [1, 2]
    assert [v for _, v in losses] == pytest.approx(history["train_loss"], rel=1e-6)
