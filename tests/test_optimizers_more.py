"""RMSprop and Adagrad: PyTorch's documented updates written out naively here, PyTorch itself
when installed, resumable state, float32 kept, and one-line errors."""
from __future__ import annotations

import numpy as np
import pytest

from minicnn.layers import Parameter
from minicnn.training import OPTIMIZERS, Adagrad, RMSprop, make_optimizer

SETTINGS = {
    "rmsprop": (RMSprop, dict(lr=0.01)),
    "rmsprop_momentum": (RMSprop, dict(lr=0.01, momentum=0.9, alpha=0.9, weight_decay=0.1)),
    "rmsprop_centered": (RMSprop, dict(lr=0.005, centered=True, eps=1e-6)),
    "rmsprop_all": (RMSprop, dict(lr=0.02, alpha=0.95, momentum=0.5, centered=True,
                                  weight_decay=0.01)),
    "adagrad": (Adagrad, dict(lr=0.1)),
    "adagrad_decay": (Adagrad, dict(lr=0.1, lr_decay=0.05, weight_decay=0.2,
                                    initial_accumulator_value=0.3, eps=1e-8)),
}


def _problem(seed=0, steps=8):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    grads = [[rng.standard_normal(p.shape) for p in params] for _ in range(steps)]
    return params, grads


def _reference(params, grads, cls, **kw):
    """PyTorch's documented algorithm, element by element in plain Python floats."""
    out = []
    for p0, gs in zip(params, zip(*grads)):
        flat = []
        for k, x in enumerate(p0.ravel().tolist()):
            s = kw.get("initial_accumulator_value", 0.0)
            a = b = 0.0
            for t, g_arr in enumerate(gs, start=1):
                g = float(g_arr.ravel()[k]) + kw.get("weight_decay", 0.0) * x
                if cls is Adagrad:
                    lr = kw["lr"] / (1 + (t - 1) * kw.get("lr_decay", 0.0))
                    s += g * g
                    x -= lr * g / (s ** 0.5 + kw.get("eps", 1e-10))
                    continue
                alpha = kw.get("alpha", 0.99)
                s = alpha * s + (1 - alpha) * g * g
                v = s
                if kw.get("centered"):
                    a = alpha * a + (1 - alpha) * g
                    v = s - a * a
                d = g / (v ** 0.5 + kw.get("eps", 1e-8))
                if kw.get("momentum"):
                    b = kw["momentum"] * b + d
                    d = b
                x -= kw["lr"] * d
            flat.append(x)
        out.append(np.array(flat).reshape(p0.shape))
    return out


def _run(params, grads, cls, dtype=np.float64, opt=None, **kw):
    ps = [Parameter(p.astype(dtype)) for p in params]
    opt = cls(ps, **kw)
    for step in grads:
        opt.zero_grad()
        for p, g in zip(ps, step):
            p.grad += g.astype(dtype)
        opt.step()
    return opt, ps


@pytest.mark.parametrize("setting", SETTINGS)
def test_matches_the_documented_update(setting):
    cls, kw = SETTINGS[setting]
    params, grads = _problem()
    _, ps = _run(params, grads, cls, **kw)
    for p, want in zip(ps, _reference(params, grads, cls, **kw)):
        np.testing.assert_allclose(p.data, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("setting", SETTINGS)
def test_matches_pytorch(setting):
    torch = pytest.importorskip("torch")
    cls, kw = SETTINGS[setting]
    params, grads = _problem(seed=1)
    for dtype, rtol in ((np.float64, 1e-12), (np.float32, 2e-5)):
        _, ps = _run(params, grads, cls, dtype=dtype, **kw)
        tps = [torch.tensor(p.astype(dtype), requires_grad=True) for p in params]
        topt = getattr(torch.optim, cls.__name__)(tps, **kw)
        for step in grads:
            topt.zero_grad()
            for tp, g in zip(tps, step):
                tp.grad = torch.tensor(g.astype(dtype))
            topt.step()
        for p, tp in zip(ps, tps):
            assert p.data.dtype == dtype
            np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=rtol, atol=rtol)


@pytest.mark.parametrize("setting", SETTINGS)
def test_resume_from_state_dict_is_bit_identical(setting):
    cls, kw = SETTINGS[setting]
    params, grads = _problem(seed=2)
    _, whole = _run(params, grads, cls, **kw)
    opt, ps = _run(params, grads[:3], cls, **kw)
    state = opt.state_dict()
    resumed = [Parameter(p.data.copy()) for p in ps]
    opt2 = cls(resumed, **kw)
    opt2.load_state_dict(state)
    for step in grads[3:]:
        opt2.zero_grad()
        for p, g in zip(resumed, step):
            p.grad += g
        opt2.step()
    for a, b in zip(whole, resumed):
        assert np.array_equal(a.data, b.data)


@pytest.mark.parametrize("name", ["rmsprop", "adagrad"])
def test_by_name_and_defaults(name):
    from minicnn.layers import Dense
    opt = make_optimizer(Dense(3, 2), name)
    assert isinstance(opt, OPTIMIZERS[name]) and opt.lr == 0.01


@pytest.mark.parametrize("make,message", [
    (lambda ps: RMSprop(ps, alpha=1.0), "RMSprop: expected alpha in [0, 1)"),
    (lambda ps: RMSprop(ps, momentum=-1), "RMSprop: expected momentum >= 0"),
    (lambda ps: Adagrad(ps, lr_decay=-0.1), "Adagrad: expected lr_decay >= 0"),
    (lambda ps: Adagrad(ps, eps=0), "Adagrad: expected eps > 0"),
    (lambda ps: Adagrad(ps, lr=0), "Adagrad: expected a finite lr > 0"),
])
def test_bad_hyper_parameters_are_one_line_errors(make, message):
    with pytest.raises(ValueError) as e:
        make([Parameter(np.zeros(2))])
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_momentum_for_an_optimizer_without_it_is_refused():
    from minicnn.layers import Dense
    with pytest.raises(ValueError, match="adagrad has no momentum"):
        make_optimizer(Dense(3, 2), "adagrad", momentum=0.9)
