"""Checkpoints written by earlier releases still load and give the same outputs.

``tests/data/checkpoint_v0.1.0.npz`` was written by minicnn 0.1.0 (before the package was
regrouped into subpackages): Conv2D, BatchNorm2D (running statistics), ReLU, MaxPool2D,
Flatten, Dropout and Dense, trained two epochs with SGD + momentum and ``Normalize(0.5, 0.25)``;
``checkpoint_v0.1.0_expected.npz`` holds its uint8 inputs and the logits 0.1.0 predicted.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

import minicnn
from minicnn.training import SGD

DATA = Path(__file__).resolve().parent / "data"


def test_a_0_1_0_checkpoint_loads_and_predicts_the_same():
    model = minicnn.load(DATA / "checkpoint_v0.1.0.npz")
    expected = np.load(DATA / "checkpoint_v0.1.0_expected.npz")
    assert repr(model.input_transform) == "Normalize(mean=0.5, std=0.25)"
    out = model.predict(expected["inputs"])
    np.testing.assert_allclose(out, expected["logits"], rtol=1e-5, atol=1e-6)
    assert np.array_equal(out.argmax(axis=1), expected["logits"].argmax(axis=1))


def test_a_0_1_0_checkpoint_resumes_its_optimizer():
    model = minicnn.load(DATA / "checkpoint_v0.1.0.npz")
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    ckpt = minicnn.checkpoint.load_weights(model, DATA / "checkpoint_v0.1.0.npz")
    assert ckpt.meta["note"] == "saved by minicnn 0.1.0"
    opt.load_state_dict(ckpt.optimizer_state)
    assert any(np.any(v != 0) for v in opt.state_dict()["velocity"])
