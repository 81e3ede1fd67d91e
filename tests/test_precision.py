"""Mixed precision (minicnn.training.precision, fit(..., precision=)): fp32 is today's fit,
fp16 trains with float32 masters close to fp32, overflowing steps are skipped and counted with
the weights untouched, bf16 is refused on NumPy, and the divergence error names a layer."""
from __future__ import annotations

import numpy as np
import pytest

import minicnn
from minicnn import data
from minicnn.layers import BatchNorm2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU
from minicnn.models import Sequential
from minicnn.training import SGD, TrainingError, fit
from minicnn.training.precision import LossScaler, Precision


def tiny_cnn(batchnorm: bool = False) -> Sequential:
    minicnn.manual_seed(0)
    layers = [Conv2D(1, 4, 3)] + ([BatchNorm2D(4)] if batchnorm else []) + \
        [ReLU(), MaxPool2D(2), Flatten(), Dense(100, 3)]
    return Sequential(layers, input_shape=(1, 12, 12))


def toy_loader(n: int = 96, batch_size: int = 32) -> data.DataLoader:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 100, (n, 12, 12)).astype(np.uint8)
    x[np.arange(n), 4 * y, 4 * y] = 255
    return data.DataLoader(x, y, batch_size=batch_size, shuffle=True, seed=0,
                           transform=data.Normalize(0.25, 0.3))


def train(precision: object = "fp32", epochs: int = 2, batchnorm: bool = False, **kw):
    model = tiny_cnn(batchnorm)
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    history = fit(model, toy_loader(), epochs, opt, progress=False, verbose=False,
                  precision=precision, **kw)
    return model, history


def weights(model) -> list[np.ndarray]:
    return [p.data.copy() for p in model.parameters()]


def test_fp32_is_todays_fit_bit_for_bit():
    default, h1 = train(precision="fp32")
    model = tiny_cnn()
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    h2 = fit(model, toy_loader(), 2, opt, progress=False, verbose=False)   # no precision=
    for a, b in zip(weights(default), weights(model)):
        assert a.dtype == np.float32 and np.array_equal(a, b)
    assert h1.records[0].keys() == h2.records[0].keys()
    assert "skipped_steps" not in h1.records[0]


def test_fp16_trains_close_to_fp32_with_float32_masters():
    ref, _ = train("fp32")
    half, history = train("fp16")
    assert all(p.data.dtype == np.float32 and p.grad.dtype == np.float32
               for p in half.parameters())
    losses = history["train_loss"]
    assert losses[-1] < losses[0]
    assert history[-1]["skipped_steps"] == 0 and history[-1]["loss_scale"] == 2.0 ** 16
    # float16 keeps 11 significant bits (relative rounding 2**-11 ~ 5e-4 per operation); after
    # 6 steps the weights differ from fp32's by a few 1e-3 relative; 5e-2 is the honest bound.
    for a, b in zip(weights(ref), weights(half)):
        assert np.linalg.norm(a - b) / np.linalg.norm(a) < 5e-2


def test_batchnorm_statistics_stay_float32_in_the_master():
    ref, _ = train("fp32", batchnorm=True)
    # at 2**16, BatchNorm's float16 gradient sums overflow on the first step (skipped); 2**8 fits
    half, history = train(Precision("fp16", init_scale=2.0 ** 8), batchnorm=True)
    assert sum(history["skipped_steps"]) == 0
    bn_ref, bn = ref.layers[1], half.layers[1]
    assert bn.running_mean.dtype == np.float32 and bn.running_var.dtype == np.float32
    assert not np.array_equal(bn.running_var, np.ones(4, np.float32))       # they moved
    np.testing.assert_allclose(bn.running_mean, bn_ref.running_mean, rtol=5e-2, atol=5e-3)


def test_a_skipped_step_leaves_batchnorm_statistics_alone():
    model = tiny_cnn(batchnorm=True)
    opt = SGD(model.parameters(), lr=0.05)
    history = fit(model, toy_loader(n=32), 1, opt, progress=False, verbose=False,
                  precision=Precision("fp16", init_scale=2.0 ** 40))
    assert history[0]["skipped_steps"] == 1
    assert np.array_equal(model.layers[1].running_mean, np.zeros(4, np.float32))


def test_overflow_skips_steps_backs_off_and_counts():
    policy = Precision("fp16", init_scale=2.0 ** 24)      # the scaled gradient overflows
    model, history = train(policy, epochs=5)
    skipped = sum(history["skipped_steps"])
    assert skipped > 0 and history[0]["skipped_steps"] == 3     # the whole first epoch
    assert history[-1]["loss_scale"] == 2.0 ** 24 * 0.5 ** skipped
    assert np.isnan(history[0]["train_loss"]) and np.isnan(history[0]["train_acc"])
    finite = [v for v in history["train_loss"] if not np.isnan(v)]
    assert len(finite) >= 2 and finite[-1] < finite[0]


def test_a_skipped_step_leaves_the_weights_unchanged():
    model = tiny_cnn()
    before = weights(model)
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = toy_loader(n=32)
    history = fit(model, loader, 1, opt, progress=False, verbose=False,
                  precision=Precision("fp16", init_scale=2.0 ** 40))
    assert history[0]["skipped_steps"] == 1 and history[0]["loss_scale"] == 2.0 ** 39
    assert opt.step_count == 0
    for a, b in zip(before, weights(model)):
        assert np.array_equal(a, b)


def test_scaler_follows_gradscalers_rule():
    s = LossScaler(growth_interval=3)
    assert s.scale == 2.0 ** 16
    s.update(False)
    assert s.scale == 2.0 ** 15 and s.skipped == 1
    for _ in range(3):
        s.update(True)
    assert s.scale == 2.0 ** 16 and s.growth_tracker == 0 and s.consecutive == 0


def test_bf16_is_refused_on_numpy_in_one_line():
    with pytest.raises(ValueError, match="bfloat16") as info:
        train("bf16", epochs=1)
    assert "\n" not in str(info.value) and "numpy" in str(info.value).lower()


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="fp16"):
        train("fp8", epochs=1)


def test_divergence_names_the_layer_that_overflowed():
    model = tiny_cnn()
    model.layers[-1].weight.data *= 1e4          # Dense's output overflows float16
    opt = SGD(model.parameters(), lr=0.05)
    with pytest.raises(TrainingError, match=r"dense_1 \(Dense\) overflowed") as info:
        fit(model, toy_loader(n=32 * 20), 1, opt, progress=False, verbose=False,
            precision="fp16")
    assert "\n" not in str(info.value)


def test_divergence_names_an_overflowing_input():
    model = tiny_cnn()
    opt = SGD(model.parameters(), lr=0.05)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((32 * 20, 1, 12, 12)) * 1e5).astype(np.float32)
    y = rng.integers(0, 3, len(x))
    with pytest.raises(TrainingError, match="input overflowed float16"):
        fit(model, (x, y), 1, opt, batch_size=32, seed=0, progress=False, verbose=False,
            precision="fp16")


def test_resume_keeps_the_loss_scale(tmp_path):
    policy = Precision("fp16", init_scale=2.0 ** 40)
    ckpt = tmp_path / "run.npz"
    model, history = train(policy, epochs=1, checkpoint=ckpt)
    model2 = tiny_cnn()
    opt = SGD(model2.parameters(), lr=0.05, momentum=0.9)
    resumed = fit(model2, toy_loader(), 2, opt, progress=False, verbose=False,
                  precision=policy, checkpoint=ckpt, resume=True)
    straight, full = train(policy, epochs=2)
    assert resumed[-1]["loss_scale"] == full[-1]["loss_scale"]
    for a, b in zip(weights(model2), weights(straight)):
        assert np.array_equal(a, b)


def test_the_epoch_line_mentions_skipped_steps(capsys):
    model = tiny_cnn()
    opt = SGD(model.parameters(), lr=0.05)
    fit(model, toy_loader(n=32), 1, opt, progress=False, verbose=True,
        precision=Precision("fp16", init_scale=2.0 ** 40))
    assert "| 1 skipped step (loss scale 5.49756e+11)" in capsys.readouterr().err
