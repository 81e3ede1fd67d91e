"""Tests of minicnn.zoo's model builders: ``width_mult`` scales the reference CNN's channels."""
from __future__ import annotations

import numpy as np
import pytest

import minicnn
from minicnn import zoo


@pytest.mark.parametrize("k", [1, 2])
def test_ref_cnn_width_mult_builds_the_expected_shapes(k):
    model = zoo.build_model("ref-cnn", width_mult=k)
    conv1, conv2, dense1, dense2 = (model.layers[i] for i in (0, 3, 7, 8))
    assert (conv1.in_channels, conv1.out_channels) == (1, 32 * k)
    assert (conv2.in_channels, conv2.out_channels) == (32 * k, 64 * k)
    assert dense1.weight.shape == (64 * k * 7 * 7, 128) and dense2.weight.shape == (128, 10)
    assert model.output_shape((1, 28, 28)) == (10,)
    out = model.forward(np.zeros((2, 1, 28, 28), np.float32), training=False)
    assert out.shape == (2, 10)


def test_default_is_the_reference_cnn():
    minicnn.manual_seed(0)
    a = zoo.build_model("ref-cnn")
    minicnn.manual_seed(0)
    b = zoo.ref_cnn(width_mult=1)
    assert sum(p.size for p in a.parameters()) == 421_642
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p.data, q.data)


def test_keyword_arguments_are_passed_on():
    with pytest.raises(TypeError):
        zoo.build_model("lenet5", width_mult=2)        # lenet5 takes none
    with pytest.raises(ValueError, match="unknown model 'alexnet'"):
        zoo.build_model("alexnet")
