"""Conv2D's Winograd F(2x2, 3x3) path: each transform against its adjoint, one tile against the
textbook formula, the float32 error against the direct sum (stated beside im2col's), and that
it runs only when chosen. The naive loops, gradient checks, PyTorch parity, inference slices
and the layer contract run on its configurations in test_conv_groups.py."""
from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from conftest import randn

from minicnn.kernels import winograd
from minicnn.layers.base import layer_config, layer_from_config
from minicnn.layers.conv import Conv2D

pytestmark = pytest.mark.usefixtures("seeded")

# =========================================================================== the transforms

@pytest.mark.parametrize("size, pads", [((4, 4), (1, 1, 1, 1)), ((5, 7), (0, 0, 0, 0)),
                                        ((3, 6), (2, 1, 0, 3))])
def test_each_backward_transform_is_the_adjoint_of_its_forward(size, pads, monkeypatch):
    """<L a, b> = <a, L^T b> for the input, output and weight transforms, also when the batch
    runs in chunks of one image."""
    monkeypatch.setattr(winograd, "CHUNK_ELEMENTS", 1)
    (h, w), n, c, o = size, 3, 2, 4
    ho, wo, t, s = winograd.tile_counts(h, w, pads)
    x = randn(n, h, w, c, seed=1)
    v = [randn(n * t * s, c, seed=10 + k) for k in range(16)]
    lhs = sum(np.vdot(p, q) for p, q in zip(winograd.input_transform(x, pads), v))
    rhs = np.vdot(x, winograd.input_transform_grad(v, x.shape, pads))
    assert lhs == pytest.approx(rhs, rel=1e-12)
    m = [randn(n * t * s, o, seed=30 + k) for k in range(16)]
    dy = randn(n, ho, wo, o, seed=2)
    lhs = np.vdot(winograd.output_transform(m, n, ho, wo), dy)
    rhs = sum(np.vdot(p, q) for p, q in zip(m, winograd.output_transform_grad(dy)))
    assert lhs == pytest.approx(rhs, rel=1e-12)
    wt, du = randn(o, c, 3, 3, seed=3), [randn(c, o, seed=50 + k) for k in range(16)]
    lhs = sum(np.vdot(p, q) for p, q in zip(winograd.weight_transform(wt), du))
    assert lhs == pytest.approx(np.vdot(wt, winograd.weight_transform_grad(du)), rel=1e-12)


def test_one_tile_is_the_textbook_formula():
    """y = A^T [(G g G^T) * (B^T d B)] A with Lavin & Gray's matrices, for one 4x4 tile."""
    d, g = randn(4, 4, seed=1), randn(3, 3, seed=2)
    b_t = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]])
    a_t = np.array([[1, 1, 1, 0], [0, 1, -1, -1]])
    big_g = np.array(winograd.G)
    textbook = a_t @ ((big_g @ g @ big_g.T) * (b_t @ d @ b_t.T)) @ a_t.T
    v = winograd.input_transform(d.reshape(1, 4, 4, 1), (0, 0, 0, 0))
    u = winograd.weight_transform(g.reshape(1, 1, 3, 3))
    y = winograd.output_transform(winograd.products(v, u), 1, 2, 2)
    np.testing.assert_allclose(y.reshape(2, 2), textbook, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(textbook, ref.conv2d_forward(d[None, None], g[None, None], None)
                               [0, 0], rtol=1e-12, atol=1e-12)


# =========================================================================== the layer

def test_float32_error_against_the_direct_sum_is_stated():
    """Winograd's float32 error against the float64 direct convolution, beside im2col's, on a
    ref-cnn-sized layer (32 -> 64 channels, 14x14), for the output and both gradients: each
    a few float32 ulps (eps 1.2e-7) of its largest value. Measured (relative to the largest):
    y 2e-7 (im2col 4.5e-7), dx 2.9e-7 (1.7e-7), dW 9.6e-7 (5.5e-7): the products' sums are
    9x shorter, the transforms' (and G's halves) add the rest."""
    x, w, b = randn(8, 32, 14, 14, seed=1), randn(64, 32, 3, 3, seed=2) / 17, randn(64, seed=3)
    dy = randn(8, 64, 14, 14, seed=4)
    exact = ref.conv2d_forward(x, w, b, padding=1)
    exact_dx, exact_dw, _ = ref.conv2d_backward(x, w, dy, 1, (1, 1, 1, 1))
    errors = {}
    for algorithm in ("im2col", "winograd"):
        layer = Conv2D(32, 64, 3, padding=1, algorithm=algorithm)
        layer.weight.data[...], layer.bias.data[...] = w, b
        y = layer.forward(x.astype(np.float32))
        dx = layer.backward(dy.astype(np.float32))
        assert y.dtype == dx.dtype == layer.weight.grad.dtype == np.float32
        for what, got, want in (("y", y, exact), ("dx", dx, exact_dx),
                                ("dW", layer.weight.grad, exact_dw)):
            errors[algorithm, what] = float(np.abs(got - want).max() / np.abs(want).max())
    for what in ("y", "dx", "dW"):
        assert errors["winograd", what] < 2e-6, errors
        assert errors["winograd", what] < 4 * errors["im2col", what], errors


def test_channels_last_and_nchw_inputs_give_the_same_result():
    layer = Conv2D(3, 4, 3, padding=1, algorithm="winograd").astype(np.float64)
    x = randn(2, 3, 6, 4, seed=1)
    y = layer.forward(x)
    dx = layer.backward(np.ones_like(y))
    last = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(layer.forward(last), y, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(layer.backward(np.ones_like(y)), dx, rtol=1e-13, atol=1e-13)


def test_backward_without_input_grad_still_adds_parameter_gradients():
    layer = Conv2D(3, 4, 3, padding=1, algorithm="winograd")
    y = layer.forward(randn(2, 3, 6, 6, seed=1).astype(np.float32))
    assert layer.backward(np.ones_like(y), input_grad=False) is None
    assert np.abs(layer.weight.grad).max() > 0 and np.abs(layer.bias.grad).max() > 0


# =========================================================================== choosing it

@pytest.mark.parametrize("make_layer, shape, path", [
    (lambda: Conv2D(32, 8, 3, padding=1, algorithm="auto"), (2, 32, 8, 6), "winograd"),
    (lambda: Conv2D(32, 8, 3, padding=1, algorithm="auto"), (2, 32, 7, 7), "im2col"),  # odd
    (lambda: Conv2D(16, 8, 3, padding=1, algorithm="auto"), (2, 16, 8, 8), "im2col"),  # few C
    (lambda: Conv2D(32, 8, 3, stride=2, padding=1, algorithm="auto"), (2, 32, 8, 8), "im2col"),
    (lambda: Conv2D(32, 8, 5, padding=2, algorithm="auto"), (2, 32, 8, 8), "im2col"),
    (lambda: Conv2D(1, 8, 3, padding=1, algorithm="winograd"), (2, 1, 7, 7), "winograd"),
    (lambda: Conv2D(32, 8, 3, padding=1), (2, 32, 8, 8), "im2col"),          # the default
])
def test_auto_picks_winograd_where_one_core_measured_it_faster(make_layer, shape, path,
                                                               monkeypatch):
    calls = []
    real = winograd.input_transform
    monkeypatch.setattr(winograd, "input_transform",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    layer = make_layer()
    y = layer.forward(np.ones(shape, np.float32))
    assert ("winograd" if calls else "im2col") == path
    assert layer.backward(np.ones_like(y)).shape == shape


def test_algorithm_survives_the_config_round_trip_and_may_change_between_steps():
    layer = Conv2D(2, 3, 3, padding=1, algorithm="winograd")
    assert layer_from_config(layer_config(layer)).algorithm == "winograd"
    assert Conv2D(2, 3, 3).config()["algorithm"] == "im2col"
    layer.algorithm = "im2col"
    assert layer.config()["algorithm"] == "im2col"
    strided = Conv2D(2, 3, 3, stride=2)
    assert not strided.winograd_applies and Conv2D(2, 3, 3, padding=1).winograd_applies
    with pytest.raises(ValueError, match="stride"):
        strided.algorithm = "winograd"
    assert strided.algorithm == "im2col"


def test_tile_planes_are_sixteen_separate_blocks():
    """One (16, ...) block would be over 32 MiB at realistic sizes, which malloc maps afresh in
    a worker thread at every step (page faults: docs/performance.md); 16 blocks it reuses."""
    x, dy = randn(2, 6, 6, 3, seed=1), randn(2, 6, 6, 4, seed=2)
    for planes in (winograd.input_transform(x, (1, 1, 1, 1)), winograd.output_transform_grad(dy)):
        owners = {id(p.base if p.base is not None else p) for p in planes}
        assert len(planes) == len(owners) == 16
