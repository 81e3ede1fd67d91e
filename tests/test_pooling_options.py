"""MaxPool2D (dilation, ceil_mode), AvgPool2D (ceil_mode, count_include_pad), GlobalMaxPool2D and
AdaptiveAvgPool2D: output sizes against PyTorch's on many sizes (ceil_mode's dropped last window
included), forward and backward against the naive loops of tests/reference.py, float64
gradcheck, PyTorch parity in float32 and float64, check_layer, checkpoints, summary, one-line
errors and ONNX export checked with ONNX Runtime."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import reference as ref

import minicnn
from minicnn.core.modes import no_grad
from minicnn.layers.adaptive_pooling import AdaptiveAvgPool2D, GlobalMaxPool2D, adaptive_windows
from minicnn.layers.conv import Conv2D
from minicnn.layers.dense import Dense
from minicnn.layers.pooling import AvgPool2D, MaxPool2D, pool_output_size
from minicnn.models import Sequential
from minicnn.testing.check_layer import check_layer
from minicnn.testing.gradient_check import gradcheck

EPS, TOL = 1e-5, 1e-6

# (kernel_size, stride, padding, dilation, ceil_mode, input (N, C, H, W))
MAX_CASES = [
    (3, 2, 1, 1, True, (2, 2, 8, 7)),            # ceil: the last window hangs past the padding
    (2, 2, 1, 1, True, (1, 2, 4, 5)),            # ceil: a window would start in the padding
    ((3, 2), (2, 3), (1, 0), (2, 1), False, (2, 1, 9, 7)),
    (2, (1, 2), 1, 2, True, (1, 3, 6, 7)),       # dilation and ceil
    (3, 3, 0, (1, 2), True, (2, 1, 8, 10)),
    (2, 2, 0, 1, False, (2, 3, 6, 6)),           # the reference CNN's pooling
]
# (kernel_size, stride, padding, ceil_mode, count_include_pad, input)
AVG_CASES = [
    (k, s, p, ceil, cip, shape)
    for (k, s, p, shape) in [(3, 2, 1, (2, 2, 8, 7)), (2, 2, 1, (1, 2, 4, 5)),
                             ((3, 2), (2, 3), (1, 1), (2, 1, 9, 7)), (3, 3, 1, (1, 2, 7, 8))]
    for ceil in (False, True) for cip in (True, False)
]
ADAPTIVE_CASES = [((7, 7), (1, 2, 14, 21)), (3, (2, 2, 7, 8)), ((2, 5), (1, 1, 5, 3)),
                  (1, (2, 3, 5, 4)), ((4, 3), (2, 1, 4, 3))]


def _max(case):
    k, s, p, d, ceil, _ = case
    return MaxPool2D(k, stride=s, padding=p, dilation=d, ceil_mode=ceil)


def _avg(case):
    k, s, p, ceil, cip, _ = case
    return AvgPool2D(k, stride=s, padding=p, ceil_mode=ceil, count_include_pad=cip)


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# =========================================================================== output sizes

def _torch_sizes():
    """Every small geometry with PyTorch's max_pool2d / avg_pool2d output size."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    cases = []
    for size, k, s, d in itertools.product(range(1, 11), range(1, 5), range(1, 4), (1, 2)):
        for p, ceil in itertools.product(range(k // 2 + 1), (False, True)):
            if d * (k - 1) + 1 > size + 2 * p:
                continue
            x = torch.zeros(1, 1, size, size + 1)
            y = F.max_pool2d(x, k, s, p, d, ceil_mode=ceil)
            cases.append((size, k, s, p, d, ceil, tuple(y.shape[2:])))
    return cases


def test_output_sizes_match_pytorch_on_many_sizes():
    cases = _torch_sizes()
    dropped = 0
    for size, k, s, p, d, ceil, torch_hw in cases:
        ours = MaxPool2D(k, s, p, d, ceil).output_shape((1, size, size + 1))[1:]
        assert ours == torch_hw, (size, k, s, p, d, ceil)
        assert ref.pool_out_size(size, k, s, p, d, ceil) == torch_hw[0]
        naive_ceil = -(-(size + 2 * p - d * (k - 1) - 1) // s) + 1
        dropped += ceil and naive_ceil > torch_hw[0]
    assert dropped > 20                  # the last-window rule was exercised, not just ceil


def test_ceil_mode_drops_a_window_starting_in_the_right_padding():
    """H=4, k=2, s=2, p=1: ceil((4+2-2)/2)+1 = 3 windows would start at -1, 1, 3; a fourth
    (ceil of 5/2) would start at 5 = H + p, in the right padding, and is dropped."""
    torch = pytest.importorskip("torch")
    x = _x((1, 1, 5, 4))
    layer = MaxPool2D(2, 2, 1, ceil_mode=True)
    assert pool_output_size(5, 2, 2, 1, 1, True) == 3
    assert layer.forward(x).shape == (1, 1, 3, 3)
    want = torch.nn.functional.max_pool2d(torch.tensor(x), 2, 2, 1, ceil_mode=True)
    np.testing.assert_array_equal(layer.forward(x), want.numpy())
    avg = AvgPool2D(2, 2, 1, ceil_mode=True).forward(x)
    np.testing.assert_allclose(avg, torch.nn.functional.avg_pool2d(
        torch.tensor(x), 2, 2, 1, ceil_mode=True).numpy(), rtol=1e-12)


def test_adaptive_windows_are_pytorchs():
    for size, out in itertools.product(range(1, 12), range(1, 9)):
        starts, ends = adaptive_windows(size, out)
        for i in range(out):
            assert (starts[i], ends[i]) == ref.adaptive_window(i, size, out)
            assert ends[i] > starts[i]


# =========================================================================== references

@pytest.mark.parametrize("case", MAX_CASES)
def test_maxpool_options_match_reference(case):
    k, s, p, d, ceil, shape = case
    x = _x(shape, 1)
    layer = _max(case)
    y = layer.forward(x)
    np.testing.assert_array_equal(y, ref.maxpool_forward(x, k, s, p, d, ceil))
    dy = _x(y.shape, 2)
    np.testing.assert_allclose(layer.backward(dy), ref.maxpool_backward(x, dy, k, s, p, d, ceil),
                               rtol=1e-13, atol=1e-13)
    with no_grad():                      # the inference path (no argmax) gives the same output
        np.testing.assert_array_equal(layer.forward(x), y)


def test_maxpool_ties_go_to_the_first_maximum():
    x = np.random.default_rng(3).integers(-1, 2, (2, 2, 7, 8)).astype(np.float64)  # many ties
    for case in MAX_CASES:
        k, s, p, d, ceil, _ = case
        layer = _max(case)
        dy = _x(layer.forward(x).shape, 4)
        np.testing.assert_allclose(layer.backward(dy),
                                   ref.maxpool_backward(x, dy, k, s, p, d, ceil), atol=1e-13)


@pytest.mark.parametrize("case", AVG_CASES)
def test_avgpool_options_match_reference(case):
    k, s, p, ceil, cip, shape = case
    x = _x(shape, 5)
    layer = _avg(case)
    y = layer.forward(x)
    np.testing.assert_allclose(y, ref.avgpool_forward(x, k, s, p, ceil, cip), rtol=1e-13)
    dy = _x(y.shape, 6)
    np.testing.assert_allclose(layer.backward(dy), ref.avgpool_backward(x, dy, k, s, p, ceil, cip),
                               rtol=1e-13, atol=1e-14)


def test_global_maxpool_matches_reference_and_maxpool_ties():
    x = np.random.default_rng(7).integers(-2, 2, (3, 4, 5, 6)).astype(np.float64)  # ties
    layer = GlobalMaxPool2D()
    y = layer.forward(x)
    assert y.shape == (3, 4)
    np.testing.assert_array_equal(y, ref.global_maxpool_forward(x))
    dy = _x(y.shape, 8)
    dx = layer.backward(dy)
    np.testing.assert_array_equal(dx, ref.global_maxpool_backward(x, dy))
    whole = MaxPool2D((5, 6))                  # one window over the whole image: same tie rule
    whole.forward(x)
    np.testing.assert_array_equal(dx, whole.backward(dy[:, :, None, None]))


@pytest.mark.parametrize("output_size, shape", ADAPTIVE_CASES)
def test_adaptive_avgpool_matches_reference(output_size, shape):
    x = _x(shape, 9)
    layer = AdaptiveAvgPool2D(output_size)
    y = layer.forward(x)
    assert y.shape == shape[:2] + ref.pair(output_size)
    np.testing.assert_allclose(y, ref.adaptive_avgpool_forward(x, output_size), rtol=1e-12)
    dy = _x(y.shape, 10)
    np.testing.assert_allclose(layer.backward(dy),
                               ref.adaptive_avgpool_backward(x, dy, output_size),
                               rtol=1e-12, atol=1e-14)


def test_float32_stays_float32():
    x = _x((2, 3, 9, 8)).astype(np.float32)
    for layer in [MaxPool2D(3, 2, 1, 2, True), AvgPool2D(3, 2, 1, True, False),
                  AdaptiveAvgPool2D((4, 3)), AdaptiveAvgPool2D(3), GlobalMaxPool2D()]:
        y = layer.forward(x)
        assert y.dtype == np.float32, layer
        assert layer.backward(np.ones_like(y)).dtype == np.float32, layer


# =========================================================================== gradients

def _gradcheck(layer, shape):
    errors = gradcheck(layer, shape, eps=EPS, tol=TOL)
    assert errors and max(errors.values()) < TOL, errors


@pytest.mark.parametrize("case", MAX_CASES)
def test_maxpool_gradcheck(case):
    _gradcheck(_max(case), case[-1])


@pytest.mark.parametrize("case", AVG_CASES)
def test_avgpool_gradcheck(case):
    _gradcheck(_avg(case), case[-1])


@pytest.mark.parametrize("output_size, shape", ADAPTIVE_CASES)
def test_adaptive_gradcheck(output_size, shape):
    _gradcheck(AdaptiveAvgPool2D(output_size), shape)


def test_global_maxpool_gradcheck():
    _gradcheck(GlobalMaxPool2D(), (2, 3, 4, 5))


# =========================================================================== PyTorch parity

def _parity(layer, torch_fn, shape, dtype):
    pytest.importorskip("torch")
    from torch_parity import torch_parity
    return torch_parity(layer, lambda x, p: torch_fn(x), _x(shape, 11), dtype=dtype)


DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", MAX_CASES)
def test_maxpool_torch_parity(case, dtype):
    torch = pytest.importorskip("torch")
    k, s, p, d, ceil, shape = case
    _parity(_max(case), lambda x: torch.nn.functional.max_pool2d(x, k, s, p, d, ceil_mode=ceil),
            shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", AVG_CASES)
def test_avgpool_torch_parity(case, dtype):
    torch = pytest.importorskip("torch")
    k, s, p, ceil, cip, shape = case
    _parity(_avg(case), lambda x: torch.nn.functional.avg_pool2d(
        x, k, s, p, ceil_mode=ceil, count_include_pad=cip), shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("output_size, shape", ADAPTIVE_CASES)
def test_adaptive_torch_parity(output_size, shape, dtype):
    torch = pytest.importorskip("torch")
    _parity(AdaptiveAvgPool2D(output_size),
            lambda x: torch.nn.functional.adaptive_avg_pool2d(x, output_size), shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_global_maxpool_torch_parity(dtype):
    torch = pytest.importorskip("torch")
    _parity(GlobalMaxPool2D(), lambda x: torch.amax(x, dim=(2, 3)), (3, 4, 5, 6), dtype)


# =========================================================================== the layer contract

@pytest.mark.parametrize("make, shape", [
    (lambda: MaxPool2D(3, 2, 1, 2, True), (4, 2, 7, 8)),
    (lambda: MaxPool2D(2, 2, 1, ceil_mode=True), (2, 1, 5, 4)),
    (lambda: AvgPool2D(3, 2, 1, True, False), (4, 2, 7, 8)),
    (lambda: AvgPool2D(2, 2, 1, True, True), (2, 1, 5, 4)),
    (lambda: AdaptiveAvgPool2D((3, 2)), (4, 2, 7, 5)),
    (lambda: AdaptiveAvgPool2D(2), (2, 2, 6, 4)),
    (lambda: GlobalMaxPool2D(), (4, 3, 5, 6)),
])
def test_check_layer(make, shape):
    check_layer(make(), shape)


def _model():
    return Sequential([Conv2D(2, 3, 3, padding=1), MaxPool2D(3, 2, 1, dilation=(1, 2),
                                                             ceil_mode=True),
                       AvgPool2D(2, 1, 1, ceil_mode=True, count_include_pad=False),
                       AdaptiveAvgPool2D((3, 2)), GlobalMaxPool2D(), Dense(3, 4)],
                      input_shape=(2, 11, 12))


def test_checkpoint_round_trip(tmp_path):
    minicnn.manual_seed(0)
    model = _model()
    path = minicnn.save(model, tmp_path / "pool.npz")
    loaded = minicnn.load(path)
    assert [layer.config() for layer in loaded.layers] == [layer.config() for layer in
                                                            model.layers]
    assert loaded.layers[1].dilation == (1, 2) and loaded.layers[1].ceil_mode is True
    assert loaded.layers[2].count_include_pad is False
    x = _x((3, 2, 11, 12), 12).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(x, training=False),
                                  model.forward(x, training=False))


def test_summary_shapes_match_pytorch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    model = _model()
    text = model.summary(print_fn=None)
    t = torch.zeros(1, 3, 11, 12)
    shapes = []
    for fn in (lambda t: F.max_pool2d(t, 3, 2, 1, (1, 2), ceil_mode=True),
               lambda t: F.avg_pool2d(t, 2, 1, 1, ceil_mode=True, count_include_pad=False),
               lambda t: F.adaptive_avg_pool2d(t, (3, 2)), lambda t: t.amax(dim=(2, 3))):
        t = fn(t)
        shapes.append("(N, " + ", ".join(map(str, t.shape[1:])) + ")")
    for layer, shape in zip(model.layers[1:5], shapes):
        row = next(line for line in text.splitlines() if line.startswith(layer.name + " "))
        assert shape in row, (row, shape)


# =========================================================================== errors

@pytest.mark.parametrize("make, kind, words", [
    (lambda: MaxPool2D(3, padding=2), ValueError, "MaxPool2D: padding"),
    (lambda: MaxPool2D(3, dilation=0), ValueError, "MaxPool2D: kernel_size, stride and dil"),
    (lambda: MaxPool2D(3, dilation="2"), TypeError, "MaxPool2D dilation"),
    (lambda: MaxPool2D(2, ceil_mode=1), TypeError, "MaxPool2D: ceil_mode must be True or"),
    (lambda: AvgPool2D(2, ceil_mode="yes"), TypeError, "AvgPool2D: ceil_mode"),
    (lambda: AvgPool2D(2, count_include_pad=0), TypeError, "AvgPool2D: count_include_pad"),
    (lambda: AvgPool2D(4, padding=3), ValueError, "AvgPool2D: padding"),
    (lambda: AdaptiveAvgPool2D(0), ValueError, "AdaptiveAvgPool2D: output_size must be >= 1"),
    (lambda: AdaptiveAvgPool2D((2, 3, 4)), TypeError, "AdaptiveAvgPool2D output_size"),
    (lambda: AdaptiveAvgPool2D(None), TypeError, "AdaptiveAvgPool2D output_size"),
])
def test_bad_arguments_are_one_line_errors_naming_the_layer(make, kind, words):
    with pytest.raises(kind, match=words) as info:
        make()
    assert "\n" not in str(info.value)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="MaxPool2D.*smaller than the window") as info:
        MaxPool2D(3, dilation=3).forward(np.zeros((1, 1, 6, 6)))
    assert "\n" not in str(info.value)
    for layer in (GlobalMaxPool2D(), AdaptiveAvgPool2D(2)):
        with pytest.raises(ValueError, match=type(layer).__name__):
            layer.forward(np.zeros((2, 3, 4)))
        with pytest.raises(ValueError, match=type(layer).__name__):
            layer.output_shape((3, 4))


# =========================================================================== ONNX

def _export(layers, shape, tmp_path, name):
    pytest.importorskip("onnxruntime")
    from test_onnx import export_and_compare
    minicnn.manual_seed(0)
    model = Sequential([Conv2D(shape[0], 3, 3, padding=1), *layers], input_shape=shape)
    return export_and_compare(model, tmp_path, name=name)


def _nodes(tmp_path, name):
    onnx = pytest.importorskip("onnx")
    return onnx.load(str(tmp_path / f"{name}.onnx")).graph.node


@pytest.mark.parametrize("case", MAX_CASES)
def test_onnx_maxpool_options(case, tmp_path):
    _export([_max(case)], case[-1][1:], tmp_path, "max")
    node = next(n for n in _nodes(tmp_path, "max") if n.op_type == "MaxPool")
    attrs = {a.name: list(a.ints) or a.i for a in node.attribute}
    assert attrs["dilations"] == list(_max(case).dilation)


@pytest.mark.parametrize("case", AVG_CASES)
def test_onnx_avgpool_options(case, tmp_path):
    _export([_avg(case)], case[-1][1:], tmp_path, "avg")
    node = next(n for n in _nodes(tmp_path, "avg") if n.op_type == "AveragePool")
    attrs = {a.name: a.i for a in node.attribute if a.name == "count_include_pad"}
    assert attrs["count_include_pad"] == int(case[4])


def test_onnx_ceil_mode_written_only_where_it_adds_a_window(tmp_path):
    """8 -> k3 s2 p1: 4 windows by floor, 5 by ceil (ceil_mode 1); 7 -> 4 either way (0)."""
    for size, ceil_attr in ((8, 1), (7, 0)):
        _export([MaxPool2D(3, 2, 1, ceil_mode=True)], (1, size, size), tmp_path, "c")
        node = next(n for n in _nodes(tmp_path, "c") if n.op_type == "MaxPool")
        assert {a.name: a.i for a in node.attribute}["ceil_mode"] == ceil_attr


def test_onnx_global_maxpool_and_adaptive(tmp_path):
    _export([GlobalMaxPool2D()], (2, 5, 6), tmp_path, "g")
    assert [n.op_type for n in _nodes(tmp_path, "g")][-2:] == ["GlobalMaxPool", "Flatten"]
    _export([AdaptiveAvgPool2D((3, 2))], (2, 9, 8), tmp_path, "a")
    assert _nodes(tmp_path, "a")[-1].op_type == "AveragePool"
    _export([AdaptiveAvgPool2D(1)], (2, 5, 7), tmp_path, "a1")
    assert _nodes(tmp_path, "a1")[-1].op_type == "GlobalAveragePool"


def test_onnx_adaptive_with_unequal_windows_is_one_export_error(tmp_path):
    pytest.importorskip("onnx")
    from minicnn.onnx.export import ExportError, export_onnx
    model = Sequential([AdaptiveAvgPool2D((3, 2))], input_shape=(2, 7, 8))
    with pytest.raises(ExportError, match="adaptiveavgpool2d.*7x8.*3x2") as info:
        export_onnx(model, tmp_path / "bad.onnx")
    assert "\n" not in str(info.value)


def test_onnx_graph_model_with_adaptive_and_global_pools(tmp_path):
    pytest.importorskip("onnxruntime")
    from test_onnx import export_and_compare
    minicnn.manual_seed(0)
    x = minicnn.Input((2, 12, 10))
    a = AdaptiveAvgPool2D((4, 5))(Conv2D(2, 3, 3, padding=1)(x))
    b = AvgPool2D(3, 2, 1, ceil_mode=True, count_include_pad=False)(x)
    y = Dense(5, 2)(minicnn.layers.Concatenate(axis=1)([GlobalMaxPool2D()(a),
                                                        GlobalMaxPool2D()(b)]))
    export_and_compare(minicnn.Model(x, y), tmp_path, name="graph")


def test_padding_rule_is_pytorchs_half_the_undilated_kernel():
    torch = pytest.importorskip("torch")
    for k, p, d in itertools.product(range(1, 5), range(0, 4), (1, 2, 3)):
        try:
            torch.nn.functional.max_pool2d(torch.zeros(1, 1, 20, 20), k, 1, p, d)
            torch_ok = True
        except RuntimeError:
            torch_ok = False
        try:
            MaxPool2D(k, 1, p, d)
            ours = True
        except ValueError:
            ours = False
        assert ours == torch_ok, (k, p, d)


def test_configs_without_the_new_options_load_with_pytorchs_defaults():
    from minicnn.layers.base import layer_from_config
    old = layer_from_config({"class": "MaxPool2D", "config": {"kernel_size": [2, 2],
                                                              "stride": [2, 2], "padding": 0}})
    assert (old.dilation, old.ceil_mode) == ((1, 1), False)
    avg = layer_from_config({"class": "AvgPool2D", "config": {"kernel_size": 3}})
    assert (avg.ceil_mode, avg.count_include_pad) == (False, True)
