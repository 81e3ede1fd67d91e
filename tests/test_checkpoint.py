"""Tests for minicnn.checkpoint: round trips, resume bit-identity, and clear errors for
corrupt, mismatched and pickle-needing files."""
from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

import minicnn
from minicnn import data, zoo
from minicnn.core import random
from minicnn.layers import (
    Add,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    LeakyReLU,
    MaxPool2D,
    ReLU,
)
from minicnn.models import Input, Model, Sequential, layer_from_config
from minicnn.saving import checkpoint
from minicnn.saving.checkpoint import CheckpointError, load_checkpoint, load_weights
from minicnn.training import loop as train


def small_model(channels: int = 4) -> Sequential:
    return Sequential([Conv2D(1, channels, 3), ReLU(), MaxPool2D(2), Flatten(), Dropout(0.25),
                       Dense(channels * 25, 3)], input_shape=(1, 12, 12))


def graph_model() -> Model:
    x = Input((2, 6, 6))
    h = Conv2D(2, 3, 3, padding=1)(x)
    h = BatchNorm2D(3)(h)
    y = Add()([h, Conv2D(2, 3, (1, 1))(x)])
    y = Dense(108, 4, activation=LeakyReLU(0.2))(Flatten()(y))
    return Model(x, y)


def toy_data(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 12, 12), dtype=np.uint8), rng.integers(0, 3, n)


def outputs(model, x) -> np.ndarray:
    return np.asarray(model.forward(x, training=False))


# --------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("build", [lambda: zoo.build_model("lenet5"), graph_model])
def test_config_round_trips_through_json(build):
    model = build()
    entry = {"class": type(model).__name__, "name": "", "config": model.config()}
    rebuilt = layer_from_config(json.loads(json.dumps(entry)))
    assert type(rebuilt) is type(model)
    assert json.dumps(rebuilt.config()) == json.dumps(model.config())
    assert [n for n, _ in rebuilt.named_parameters()] == [n for n, _ in model.named_parameters()]


def test_save_load_sequential(tmp_path):
    minicnn.manual_seed(1)
    model = zoo.build_model("ref-cnn")
    path = minicnn.save(model, tmp_path / "m.npz", note="hello", accuracy=np.float32(0.5))
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    state = random.get_rng_state()
    ckpt = load_checkpoint(path)
    assert random.get_rng_state() == state                # rebuilding drew no global numbers
    assert np.array_equal(outputs(ckpt.model, x), outputs(model, x))
    assert ckpt.meta == {"note": "hello", "accuracy": 0.5}
    assert ckpt.optimizer_state is None
    assert ckpt.model.parameters()[0].data.dtype == np.float32
    assert isinstance(minicnn.load(path), Sequential)


def test_save_load_graph_with_batchnorm_state(tmp_path):
    minicnn.manual_seed(2)
    model = graph_model()
    x = np.random.default_rng(0).random((4, 2, 6, 6), dtype=np.float32)
    model.forward(x, training=True)                       # moves the running statistics
    minicnn.save(model, tmp_path / "g.npz")
    loaded = minicnn.load(tmp_path / "g.npz")
    assert isinstance(loaded, Model)
    bn = next(layer for layer in loaded.layers if isinstance(layer, BatchNorm2D))
    assert not np.allclose(bn.running_mean, 0)
    assert np.array_equal(outputs(loaded, x), outputs(model, x))


def test_optimizer_state_round_trip(tmp_path):
    model = small_model()
    opt = minicnn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    train.fit(model, toy_data(64), 1, opt, batch_size=32, progress=False)
    minicnn.save(model, tmp_path / "o.npz", optimizer=opt)
    ckpt = load_checkpoint(tmp_path / "o.npz")
    fresh = minicnn.optim.SGD(ckpt.model.parameters(), lr=1.0, momentum=0.5)
    fresh.load_state_dict(ckpt.optimizer_state)
    assert (fresh.lr, fresh.momentum, fresh.weight_decay) == (opt.lr, 0.9, 1e-4)
    assert all(np.array_equal(a, b) for a, b in zip(fresh.velocity, opt.velocity))


# --------------------------------------------------------------------------- resume

def _run(path, epochs=3, stop_at=None, resume=False, workers=None, build=small_model):
    """Seeded training of small_model with dropout and augmentation; SIGINT at ``stop_at``."""
    minicnn.manual_seed(0)
    model = build()
    opt = minicnn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x, y = toy_data()
    loader = data.DataLoader(x, y, batch_size=32, seed=0, augment=data.RandomShift(1),
                             transform=data.Normalize(0.5, 0.3))
    schedule = minicnn.training.CosineLR(0.05, epochs * len(loader))

    class Interrupt:
        def on_step_end(self, step):
            if step == stop_at:
                signal.raise_signal(signal.SIGINT)
    history = train.fit(model, loader, epochs, opt, val_data=toy_data(40, seed=1),
                        schedule=schedule, callbacks=[Interrupt()], checkpoint=path,
                        resume=resume, progress=False, log_every=3, workers=workers)
    return model, history


def _without_timings(history):
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")}
            for r in history]


@pytest.mark.parametrize("stop_at", [7, 9, 12])   # at an epoch's end (7 steps), mid-epoch
def test_resume_is_bit_identical(tmp_path, stop_at):
    full, full_history = _run(tmp_path / "full.npz")
    part, part_history = _run(tmp_path / "part.npz", stop_at=stop_at)
    assert part_history.stopped == "interrupted"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    resumed, history = _run(tmp_path / "part.npz", resume=True)
    assert history.stopped is None
    for (name, a), (_, b) in zip(full.named_parameters(), resumed.named_parameters()):
        assert np.array_equal(a.data, b.data), name
    assert _without_timings(history) == _without_timings(full_history)
    saved = load_checkpoint(tmp_path / "part.npz").meta["training"]
    assert saved["epoch"] == 3 and saved["step"] == 21


def test_resume_with_another_worker_count_differs_by_rounding_only(tmp_path):
    """Bit-identical needs the same number of replicas: with another, each batch's gradient
    is summed in another order (and Dropout, absent here, would draw other masks)."""
    def build():
        return Sequential([Conv2D(1, 4, 3), ReLU(), MaxPool2D(2), Flatten(), Dense(100, 3)],
                          input_shape=(1, 12, 12))
    full, _ = _run(tmp_path / "full.npz", workers=2, build=build)
    _run(tmp_path / "part.npz", stop_at=9, workers=2, build=build)
    same, _ = _run(tmp_path / "part.npz", resume=True, workers=2, build=build)
    _run(tmp_path / "part1.npz", stop_at=9, workers=2, build=build)
    other, _ = _run(tmp_path / "part1.npz", resume=True, workers=1, build=build)
    for (name, a), (_, b), (_, c) in zip(full.named_parameters(), same.named_parameters(),
                                         other.named_parameters()):
        assert np.array_equal(a.data, b.data), name
        np.testing.assert_allclose(c.data, a.data, rtol=1e-4, atol=1e-6, err_msg=name)


def test_resume_needs_a_training_checkpoint(tmp_path):
    minicnn.save(small_model(), tmp_path / "plain.npz")
    with pytest.raises(CheckpointError, match="plain.npz.*not a training checkpoint"):
        _run(tmp_path / "plain.npz", resume=True)


# --------------------------------------------------------------------------- bad files

@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "model.npz"
    minicnn.save(small_model(), path)
    return path


def test_truncated_file_is_refused(saved):
    raw = saved.read_bytes()
    saved.write_bytes(raw[:len(raw) // 2])
    with pytest.raises(CheckpointError, match=f"{saved}.*truncated or corrupt"):
        minicnn.load(saved)


def test_corrupted_bytes_are_refused(saved):
    raw = bytearray(saved.read_bytes())
    start = raw.index(b"param/")                         # inside the first array's data
    for i in range(start + 200, start + 260):
        raw[i] ^= 0xFF
    saved.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=str(saved)):
        minicnn.load(saved)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="nope.npz: no such checkpoint"):
        minicnn.load(tmp_path / "nope.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(CheckpointError, match="text.npz"):
        minicnn.load(tmp_path / "text.npz")
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    with pytest.raises(CheckpointError, match="plain.npz: not a minicnn checkpoint"):
        minicnn.load(tmp_path / "plain.npz")
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(CheckpointError, match="one.npy: not a minicnn checkpoint"):
        minicnn.load(tmp_path / "one.npy")


def test_mismatched_architecture_is_refused(saved):
    with pytest.raises(CheckpointError, match=f"{saved}.*does not match.*shape"):
        load_weights(small_model(channels=5), saved)
    other = Sequential([Flatten(), Dense(144, 3)], input_shape=(1, 12, 12))
    with pytest.raises(CheckpointError,
                       match=f"{saved}.*does not match.*not in the model: conv2d_1"):
        load_weights(other, saved)


def test_file_needing_pickle_is_refused(tmp_path, saved):
    with np.load(saved) as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays["evil"] = np.array([{"a": 1}], dtype=object)
    np.savez(tmp_path / "evil.npz", **arrays)
    with pytest.raises(CheckpointError, match="evil.npz.*pickle"):
        minicnn.load(tmp_path / "evil.npz")
    import pickle
    (tmp_path / "pickled.npz").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="pickled.npz.*pickle"):
        minicnn.load(tmp_path / "pickled.npz")


# --------------------------------------------------------------------------- atomic writes

def test_atomic_write_leaves_no_temp_file(tmp_path, saved, monkeypatch):
    assert os.listdir(tmp_path) == ["model.npz"]
    minicnn.save(small_model(), saved)                   # overwrite in place
    assert os.listdir(tmp_path) == ["model.npz"]
    before = saved.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(checkpoint.numpy, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        minicnn.save(small_model(), saved)
    assert os.listdir(tmp_path) == ["model.npz"]         # no temp file left behind
    assert saved.read_bytes() == before                 # and the old checkpoint intact


def test_meta_must_be_json(tmp_path):
    with pytest.raises(CheckpointError, match="JSON"):
        minicnn.save(small_model(), tmp_path / "m.npz", bad=object())
    assert not os.listdir(tmp_path)


def test_load_accepts_a_run_folder_as_the_command_line_does(tmp_path):
    model = minicnn.Sequential([minicnn.layers.Dense(3, 2)], input_shape=(3,))
    run = tmp_path / "runs" / "ref-cnn-mnist"
    run.mkdir(parents=True)
    minicnn.save(model, run / "model.npz", epoch=3)
    assert minicnn.load(run).config() == model.config()
    ckpt = minicnn.checkpoint.load_checkpoint(run)
    assert ckpt.path == run / "model.npz" and ckpt.meta["epoch"] == 3
    assert minicnn.checkpoint.load_weights(model, run).meta["epoch"] == 3
    with pytest.raises(minicnn.CheckpointError, match="runs: a folder without model.npz"):
        minicnn.load(tmp_path / "runs")
