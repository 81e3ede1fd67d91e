"""Conv2D with groups (grouped and depthwise convolution), padding 'valid'/'same' for any
kernel and the Winograd path (more in test_winograd.py): naive loop references, float64
gradient checks, PyTorch parity (float32 and float64), the layer contract, checkpoints, summary
shapes, ONNX export, and one-line errors."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import reference as ref
from conftest import randn

import minicnn
from minicnn.kernels import depthwise
from minicnn.layers import conv as conv_module
from minicnn.layers.conv import Conv2D
from minicnn.testing.check_layer import check_layer
from minicnn.testing.gradient_check import gradcheck

pytestmark = pytest.mark.usefixtures("seeded")

EPS, TOL = 1e-5, 1e-6

# (in, out, kernel, keyword arguments, input (N, H, W)): groups 1, 2, depthwise, depthwise
# multiplier 2, stride 2, dilation 2, even-kernel 'same', no bias
CONFIGS = [
    (2, 3, 4, {"padding": "same"}, (2, 6, 5)),
    (2, 3, (2, 3), {"padding": "same", "dilation": 2}, (2, 7, 6)),
    (4, 6, 3, {"padding": 1, "groups": 2}, (2, 6, 5)),
    (3, 3, 3, {"padding": 1, "groups": 3}, (2, 6, 5)),
    (3, 6, 3, {"padding": 1, "groups": 3}, (2, 5, 6)),
    (4, 4, 3, {"stride": 2, "padding": 1, "groups": 2}, (2, 7, 6)),
    (3, 3, (3, 2), {"stride": 2, "padding": (1, 0), "groups": 3}, (2, 7, 6)),
    (3, 6, 3, {"dilation": 2, "padding": 2, "groups": 3}, (2, 6, 7)),
    (6, 4, 3, {"dilation": (2, 1), "groups": 2}, (2, 7, 5)),
    (3, 3, (2, 4), {"padding": "same", "groups": 3}, (2, 5, 6)),
    (4, 8, 2, {"padding": "same", "groups": 2, "bias": False}, (2, 5, 5)),
    (3, 6, 3, {"stride": (2, 1), "groups": 3, "bias": False}, (3, 7, 6)),
    # Winograd F(2x2, 3x3): even and odd outputs, padding 0/1/2, 'same', a (1, 0) pair, no bias
    (3, 4, 3, {"padding": 1, "algorithm": "winograd"}, (2, 6, 6)),
    (2, 3, 3, {"algorithm": "winograd"}, (2, 7, 5)),
    (3, 2, 3, {"padding": 2, "bias": False, "algorithm": "winograd"}, (1, 5, 6)),
    (2, 2, 3, {"padding": "same", "algorithm": "winograd"}, (3, 4, 3)),
    (4, 3, 3, {"padding": (1, 0), "algorithm": "winograd"}, (2, 5, 8)),
    (2, 3, 3, {"padding": 1, "algorithm": "winograd"}, (2, 1, 2)),
]
IDS = [f"{c}-{o}-k{k}-" + "-".join(f"{a}{v}" for a, v in kw.items()) for c, o, k, kw, _ in
       CONFIGS]


def make(config):
    c, o, k, kwargs, (n, h, w) = config
    return Conv2D(c, o, k, **kwargs), (n, c, h, w)


def torch_conv(layer):
    import torch.nn.functional as F
    padding = "same" if layer.pads[:2] != layer.pads[2:] else layer.padding

    def conv(x, p):
        with warnings.catch_warnings():     # PyTorch: even 'same' kernels copy the input
            warnings.filterwarnings("ignore", "Using padding='same'", UserWarning)
            return F.conv2d(x, p["weight"], p.get("bias"), layer.stride, padding,
                            layer.dilation, layer.groups)
    return conv


# =========================================================================== definitions

@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_forward_and_backward_match_naive_loops(config):
    layer, shape = make(config)
    layer.astype(np.float64)
    if layer.bias is not None:
        layer.bias.data[:] = randn(layer.out_channels, seed=3)
    x = randn(*shape, seed=1)
    bias = None if layer.bias is None else layer.bias.data
    y = layer.forward(x)
    want = ref.conv2d_forward(x, layer.weight.data, bias, layer.stride, layer.pads,
                              layer.dilation, layer.groups)
    assert y.shape == want.shape == (shape[0],) + layer.output_shape(shape[1:])
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    dy = randn(*y.shape, seed=2)
    dx = layer.backward(dy)
    dx_ref, dw_ref, db_ref = ref.conv2d_backward(x, layer.weight.data, dy, layer.stride,
                                                 layer.pads, layer.dilation, layer.groups)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.weight.grad, dw_ref, rtol=1e-12, atol=1e-12)
    if layer.bias is not None:
        np.testing.assert_allclose(layer.bias.grad, db_ref, rtol=1e-12, atol=1e-12)


def test_reference_groups_are_independent_convolutions():
    """The naive grouped reference is G ordinary convolutions side by side."""
    x, w, b = randn(2, 4, 5, 5, seed=1), randn(6, 2, 3, 3, seed=2), randn(6, seed=3)
    y = ref.conv2d_forward(x, w, b, padding=1, groups=2)
    for g in range(2):
        np.testing.assert_allclose(y[:, 3 * g:3 * g + 3], ref.conv2d_forward(
            x[:, 2 * g:2 * g + 2], w[3 * g:3 * g + 3], b[3 * g:3 * g + 3], padding=1))


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_gradcheck(config):
    layer, shape = make(config)
    errors = gradcheck(layer, shape, eps=EPS, tol=TOL)
    assert set(errors) == {"input", "weight"} | ({"bias"} if layer.bias is not None else set())
    assert max(errors.values()) < TOL, errors


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_torch_parity(config, dtype):
    pytest.importorskip("torch")
    from torch_parity import torch_parity
    layer, shape = make(config)
    torch_parity(layer, torch_conv(layer), randn(*shape, seed=4), dtype=dtype)


@pytest.mark.parametrize("config", [CONFIGS[i] for i in (2, 3, 4, 6, 9, 12, 13)],
                         ids=[IDS[i] for i in (2, 3, 4, 6, 9, 12, 13)])
def test_check_layer(config):
    layer, shape = make(config)
    check_layer(layer, (4,) + shape[1:])


@pytest.mark.parametrize("columns", [conv_module.INFERENCE_COLUMNS, 1])   # 1: a slice a sample
def test_inference_forward_equals_training_forward(columns, monkeypatch):
    monkeypatch.setattr(conv_module, "INFERENCE_COLUMNS", columns)
    for config in CONFIGS:
        layer, shape = make(config)
        x = randn(*shape, seed=5).astype(np.float32)
        y = layer.forward(x)
        with minicnn.no_grad():
            np.testing.assert_allclose(layer.forward(x), y, rtol=1e-6, atol=1e-6)


def test_depthwise_makes_no_im2col(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("depthwise convolution called im2col")
    monkeypatch.setattr(conv_module, "im2col", refuse)
    monkeypatch.setattr(conv_module, "col2im_matmul", refuse)
    layer = Conv2D(4, 8, 3, padding=1, groups=4)
    assert layer.depthwise
    y = layer.forward(randn(2, 4, 5, 5, seed=1).astype(np.float32))
    assert layer.backward(np.ones_like(y)).shape == (2, 4, 5, 5)
    assert not Conv2D(1, 1, 3).depthwise and not Conv2D(4, 4, 3, groups=2).depthwise


def test_depthwise_batch_slices_give_the_whole_batch_result(monkeypatch):
    layer = Conv2D(3, 6, 3, padding=(1, 2), groups=3).astype(np.float64)
    x, dy = randn(5, 3, 6, 5, seed=1), randn(5, 6, 6, 7, seed=2)
    y_whole = layer.forward(x)
    dx_whole = layer.backward(dy)
    dw_whole = layer.weight.grad.copy()
    monkeypatch.setattr(depthwise, "SLICE_ELEMENTS", 2 * 8 * 9 * 3)   # 2 samples, then 1
    layer.zero_grad()
    np.testing.assert_allclose(layer.forward(x), y_whole, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(layer.backward(dy), dx_whole, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(layer.weight.grad, dw_whole, rtol=1e-13, atol=1e-13)


def test_depthwise_slices_are_larger_in_a_replica_of_a_split_batch(monkeypatch):
    from minicnn.core.batch_sum import ReplicaGroup, replica_scope
    layer = Conv2D(3, 3, 3, padding=1, groups=3).astype(np.float64)
    x, dy = randn(6, 3, 6, 6, seed=1), randn(6, 3, 6, 6, seed=2)
    y_whole, dx_whole = layer.forward(x), layer.backward(dy)
    per_sample = 8 * 8 * 3
    monkeypatch.setattr(depthwise, "SLICE_ELEMENTS", 4 * per_sample)
    monkeypatch.setattr(depthwise, "SPLIT_SLICE_ELEMENTS", 1 * per_sample)
    assert depthwise._slice_step(x, layer.pads) == 4
    with replica_scope(ReplicaGroup(2), 0):
        assert depthwise._slice_step(x, layer.pads) == 1
        np.testing.assert_allclose(layer.forward(x), y_whole, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(layer.backward(dy), dx_whole, rtol=1e-13, atol=1e-13)


def test_backward_without_input_grad_still_adds_parameter_gradients():
    for config in CONFIGS[2:5]:
        layer, shape = make(config)
        y = layer.forward(randn(*shape, seed=1).astype(np.float32))
        assert layer.backward(np.ones_like(y), input_grad=False) is None
        assert np.abs(layer.weight.grad).max() > 0


# =========================================================================== construction

def test_weight_shape_and_pytorch_fan_in():
    layer = Conv2D(64, 128, 3, groups=4)
    assert layer.weight.shape == (128, 16, 3, 3) and layer.bias.shape == (128,)
    bound = 1 / np.sqrt(16 * 9)        # kaiming_uniform(a=sqrt(5)) and the bias: 1/sqrt(fan_in)
    for p in (layer.weight.data, layer.bias.data):
        assert np.abs(p).max() <= bound and np.abs(p).max() > 0.9 * bound
    assert Conv2D(8, 16, 3, groups=8).weight.shape == (16, 1, 3, 3)


def test_padding_same_and_valid():
    assert Conv2D(1, 1, 3, padding="valid").pads == (0, 0, 0, 0)
    even = Conv2D(2, 2, 4, padding="same")
    assert even.pads == (1, 1, 2, 2) and even.padding == (1, 1)          # one more bottom/right
    assert Conv2D(1, 1, (2, 3), padding="same", dilation=(3, 2)).pads == (1, 2, 2, 2)
    assert Conv2D(1, 1, 5, padding="same").pads == (2, 2, 2, 2)
    assert even.output_shape((2, 7, 6)) == (2, 7, 6)
    assert even.forward(randn(1, 2, 7, 6).astype(np.float32)).shape == (1, 2, 7, 6)


@pytest.mark.parametrize("make_layer, words", [
    (lambda: Conv2D(4, 6, 3, groups=4), ("Conv2D", "groups", "4", "6")),
    (lambda: Conv2D(6, 4, 3, groups=4), ("Conv2D", "groups", "6")),
    (lambda: Conv2D(4, 4, 3, groups=0), ("Conv2D", "groups", "0")),
    (lambda: Conv2D(4, 4, 3, stride=2, padding="same"), ("Conv2D", "same", "stride")),
    (lambda: Conv2D(4, 4, 3, padding="full"), ("Conv2D", "padding", "'full'", "same")),
    (lambda: Conv2D(4, 4, 3, algorithm="fft"), ("Conv2D", "algorithm", "'fft'", "winograd")),
    (lambda: Conv2D(4, 4, 3, stride=2, algorithm="winograd"), ("Conv2D", "3x3", "stride")),
    (lambda: Conv2D(4, 4, 5, algorithm="winograd"), ("Conv2D", "kernel (5, 5)")),
    (lambda: Conv2D(4, 4, 3, groups=2, algorithm="winograd"), ("Conv2D", "groups 2")),
])
def test_one_line_errors(make_layer, words):
    with pytest.raises(ValueError) as info:
        make_layer()
    message = str(info.value)
    assert "\n" not in message and all(word in message for word in words), message


def test_input_with_wrong_channel_count_is_refused():
    with pytest.raises(ValueError, match="expected 4 input channels"):
        Conv2D(4, 4, 3, groups=2).forward(np.zeros((1, 2, 5, 5), np.float32))


# =========================================================================== models

def _model():
    return minicnn.Sequential([
        Conv2D(2, 4, 3, padding=1), Conv2D(4, 8, 3, padding=1, groups=4),
        Conv2D(8, 8, 4, padding="same", groups=2), Conv2D(8, 8, 1, groups=8, bias=False),
        minicnn.layers.Flatten()], input_shape=(2, 6, 5))


def test_summary_shapes_and_parameter_counts():
    text = _model().summary(print_fn=None)
    rows = [line.split() for line in text.splitlines() if line.startswith("conv2d_")]
    assert [row[-1] for row in rows] == [str(4 * 2 * 9 + 4), str(8 * 1 * 9 + 8),
                                         str(8 * 4 * 16 + 8), str(8 * 1 * 1)]
    assert all("(N, 8, 6, 5)" in " ".join(row) for row in rows[1:])


def test_checkpoint_round_trip(tmp_path):
    model = _model()
    x = randn(3, 2, 6, 5, seed=1).astype(np.float32)
    path = minicnn.save(model, tmp_path / "groups.npz")
    loaded = minicnn.load(path)
    convs = [layer for layer in loaded.layers if isinstance(layer, Conv2D)]
    assert [c.groups for c in convs] == [1, 4, 2, 8]
    assert convs[2].pads == (1, 1, 2, 2)
    with minicnn.no_grad():
        np.testing.assert_array_equal(loaded.forward(x), model.forward(x))


@pytest.mark.parametrize("conv", [
    lambda: Conv2D(4, 6, 3, padding=1, groups=2),
    lambda: Conv2D(4, 8, 3, stride=2, padding=1, groups=4),
    lambda: Conv2D(4, 4, (2, 4), padding="same", dilation=(1, 2), groups=4),
    lambda: Conv2D(4, 6, 4, padding="same", groups=2),
], ids=["grouped", "depthwise-x2", "depthwise-even-same", "grouped-even-same"])
def test_onnx_export_matches_onnx_runtime(conv, tmp_path):
    pytest.importorskip("onnxruntime")
    from test_onnx import export_and_compare
    layer = conv()
    if layer.bias is not None:
        layer.bias.data[:] = randn(layer.out_channels, seed=2).astype(np.float32)
    model = minicnn.Sequential([layer], input_shape=(4, 7, 8))
    assert export_and_compare(model, tmp_path) < 1e-4


@pytest.mark.gpu
def test_cupy_matches_numpy():
    cp = pytest.importorskip("cupy")
    for config in CONFIGS:
        layer, shape = make(config)
        x, dy = randn(*shape, seed=1).astype(np.float32), None
        y = layer.forward(x)
        dy = randn(*y.shape, seed=2).astype(np.float32)
        dx = layer.backward(dy)
        grads = [p.grad.copy() for p in layer.parameters()]
        layer.to("cupy")
        layer.zero_grad()
        y_gpu = layer.forward(cp.asarray(x))
        dx_gpu = layer.backward(cp.asarray(dy))
        np.testing.assert_allclose(cp.asnumpy(y_gpu), y, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(cp.asnumpy(dx_gpu), dx, rtol=1e-4, atol=1e-5)
        for p, want in zip(layer.parameters(), grads):
            np.testing.assert_allclose(cp.asnumpy(p.grad), want, rtol=1e-4, atol=1e-4)
