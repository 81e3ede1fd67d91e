"""Adam and AdamW: PyTorch's documented updates, written out naively here, PyTorch itself when
installed, resumable state, and schedules."""
from __future__ import annotations

import math

import numpy as np
import pytest

import minicnn
from minicnn.layers import Dense, Flatten, Parameter
from minicnn.training import OPTIMIZERS, Adam, AdamW, CosineLR

SETTINGS = {
    "adam": (Adam, dict(lr=0.01)),
    "adam_wd": (Adam, dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    "adamw": (AdamW, dict(lr=0.01)),
    "adamw_wd": (AdamW, dict(lr=0.02, betas=(0.5, 0.9), weight_decay=0.3)),
}


def _problem(seed=0, steps=6):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    grads = [[rng.standard_normal(p.shape) for p in params] for _ in range(steps)]
    return params, grads


def _reference(params, grads, cls, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=None):
    """The update as PyTorch's documentation writes it, one scalar formula at a time."""
    decoupled = cls is AdamW
    wd = (0.01 if decoupled else 0.0) if weight_decay is None else weight_decay
    b1, b2 = betas
    ps = [p.copy() for p in params]
    m = [np.zeros_like(p) for p in ps]
    v = [np.zeros_like(p) for p in ps]
    for t, step in enumerate(grads, start=1):
        for i, g in enumerate(step):
            if decoupled:
                ps[i] = ps[i] * (1 - lr * wd)
            else:
                g = g + wd * ps[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat, v_hat = m[i] / (1 - b1 ** t), v[i] / (1 - b2 ** t)
            ps[i] = ps[i] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return ps


def _run(params, grads, cls, **kw):
    ps = [Parameter(p.copy()) for p in params]
    opt = cls(ps, **kw)
    for step in grads:
        opt.zero_grad()
        for p, g in zip(ps, step):
            p.grad += g
        opt.step()
    return opt, ps


@pytest.mark.parametrize("name", list(SETTINGS))
def test_adam_matches_the_documented_update(name):
    cls, kw = SETTINGS[name]
    params, grads = _problem()
    _, ps = _run(params, grads, cls, **kw)
    for p, e in zip(ps, _reference(params, grads, cls, **kw)):
        np.testing.assert_allclose(p.data, e, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", list(SETTINGS))
@pytest.mark.slow
def test_adam_optional_parity_with_torch(name):
    torch = pytest.importorskip("torch")
    cls, kw = SETTINGS[name]
    params, grads = _problem(seed=1)
    tensors = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    topt = getattr(torch.optim, cls.__name__)(tensors, **kw)
    for step in grads:
        topt.zero_grad()
        for t, g in zip(tensors, step):
            t.grad = torch.tensor(g)
        topt.step()
    _, ps = _run(params, grads, cls, **kw)
    for p, t in zip(ps, tensors):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_adam_state_round_trips_through_a_checkpoint(tmp_path):
    minicnn.manual_seed(0)
    model = minicnn.Sequential([Flatten(), Dense(4, 3)], input_shape=(1, 2, 2))
    x = np.random.default_rng(2).standard_normal((8, 1, 2, 2)).astype(np.float32)
    y = np.arange(8) % 3
    opt = AdamW(model.parameters(), lr=0.01)
    loss = minicnn.losses.SoftmaxCrossEntropy()

    def step(m, o):
        o.zero_grad()
        loss.forward(m.forward(x, training=True), y)
        m.backward(loss.backward())
        o.step()
    for _ in range(3):
        step(model, opt)
    minicnn.save(model, tmp_path / "m.npz", optimizer=opt)
    ckpt = minicnn.checkpoint.load_checkpoint(tmp_path / "m.npz")
    assert ckpt.optimizer_state["class"] == "AdamW" and ckpt.optimizer_state["step"] == 3
    twin_opt = AdamW(ckpt.model.parameters(), lr=0.5, weight_decay=0.0)
    twin_opt.load_state_dict(ckpt.optimizer_state)
    assert (twin_opt.lr, twin_opt.weight_decay, twin_opt.step_count) == (0.01, 0.01, 3)
    step(model, opt)
    step(ckpt.model, twin_opt)
    for a, b in zip(model.parameters(), ckpt.model.parameters()):
        np.testing.assert_array_equal(a.data, b.data)


def test_adam_follows_a_schedule_inside_fit():
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 256, (64, 2, 2), dtype=np.uint8), rng.integers(0, 3, 64)
    model = minicnn.Sequential([Flatten(), Dense(4, 3)], input_shape=(1, 2, 2))
    opt = Adam(model.parameters())
    schedule = CosineLR(0.01, total_steps=4)
    history = model.fit((x, y), epochs=2, optimizer=opt, batch_size=32, schedule=schedule,
                        progress=False)
    assert opt.step_count == 4 and history[-1]["lr"] == pytest.approx(schedule(3))


@pytest.mark.parametrize("bad", [dict(lr=math.nan), dict(lr=math.inf), dict(lr=-1.0),
                                 dict(betas=(1.0, 0.9)), dict(eps=0.0),
                                 dict(weight_decay=-0.1)])
def test_adam_refuses_bad_settings(bad):
    with pytest.raises(ValueError, match="Adam"):
        Adam([Parameter(np.zeros(2))], **bad)


def test_optimizers_by_name():
    assert set(OPTIMIZERS) == {"sgd", "adam", "adamw", "rmsprop", "adagrad"}
