"""Upsample2D, ZeroPad2D and Dropout2D: gradient checks, the naive loop definitions in
``reference.py``, PyTorch parity (float32 and float64), the layer contract, checkpoints,
summaries, ONNX export against ONNX Runtime, and one-line errors."""
from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from conftest import randn

import minicnn
from minicnn.layers import Conv2D, Dense, Dropout, Flatten, ReLU, upsample
from minicnn.layers.dropout import Dropout2D
from minicnn.layers.padding import ZeroPad2D
from minicnn.layers.upsample import Upsample2D, bilinear_matrix
from minicnn.testing.check_layer import check_layer
from minicnn.testing.gradient_check import gradcheck

EPS, TOL = 1e-5, 1e-6          # as tests/test_layers.py (see the comment there)
SCALES = [2, 3, (2, 3), 1]
MODES = [("nearest", False), ("bilinear", False), ("bilinear", True)]
MODE_IDS = ["nearest", "bilinear", "bilinear-align"]
PATHS = [mode + ("matmul",) for mode in MODES] + [("bilinear", False, "gather"),
                                                  ("bilinear", True, "gather")]
"""The modes, bilinear twice: its interpolation matrix is applied by matmul with the dense
matrix for short axes, and by gathers of its non-zeros for long ones (``use_path`` sets
DENSE_MAX to 0 for "gather", so every axis takes that way)."""
PATH_IDS = MODE_IDS + ["bilinear-gather", "bilinear-align-gather"]
PADDINGS = [1, (1, 2, 0, 3), (2, 0, 1, 1), (-1, 2, 1, -2)]

pytestmark = pytest.mark.usefixtures("seeded")


def use_path(path, monkeypatch):
    if path == "gather":
        monkeypatch.setattr(upsample, "DENSE_MAX", 0)


def check(layer, shape, **kwargs):
    errors = gradcheck(layer, shape, eps=EPS, tol=TOL, **kwargs)
    assert errors and max(errors.values()) < TOL, errors
    return errors


def _sides(padding):
    return (padding,) * 4 if isinstance(padding, int) else padding


def _torch_interpolate(scale, mode, align_corners):
    import torch.nn.functional as F

    factor = scale if isinstance(scale, int) else tuple(float(s) for s in scale)
    extra = {} if mode == "nearest" else {"align_corners": align_corners}
    return lambda x, params: F.interpolate(x, scale_factor=factor, mode=mode, **extra)


# =========================================================================== Upsample2D

@pytest.mark.parametrize("mode,align_corners,path", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("scale", SCALES, ids=str)
def test_upsample_gradcheck(mode, align_corners, path, scale, monkeypatch):
    use_path(path, monkeypatch)
    check(Upsample2D(scale, mode, align_corners), (2, 2, 3, 4))


@pytest.mark.parametrize("mode,align_corners,path", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("scale", SCALES + [(1, 4)], ids=str)
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 2, 1, 3), (1, 1, 2, 1)], ids=str)
def test_upsample_matches_the_loop_definition(mode, align_corners, path, scale, shape,
                                              monkeypatch):
    use_path(path, monkeypatch)
    x = randn(*shape, seed=1)
    layer = Upsample2D(scale, mode, align_corners).astype(np.float64)
    y = layer.forward(x)
    want = ref.upsample_forward(x, scale, mode, align_corners)
    np.testing.assert_allclose(y, want, rtol=1e-13, atol=1e-13)
    dy = randn(*y.shape, seed=2)
    np.testing.assert_allclose(layer.backward(dy),
                               ref.upsample_backward(shape, dy, scale, mode, align_corners),
                               rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode,align_corners,path", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("scale", SCALES, ids=str)
def test_upsample_matches_torch(mode, align_corners, path, scale, dtype, monkeypatch):
    use_path(path, monkeypatch)
    pytest.importorskip("torch")
    from torch_parity import torch_parity

    torch_parity(Upsample2D(scale, mode, align_corners),
                 _torch_interpolate(scale, mode, align_corners), randn(2, 3, 5, 7, seed=3),
                 dtype=dtype)


@pytest.mark.parametrize("path", ["matmul", "gather"])
def test_upsample_keeps_the_dtype_and_returns_fresh_arrays(path, monkeypatch):
    use_path(path, monkeypatch)
    x = randn(1, 2, 3, 3, dtype=np.float32)
    for mode, align_corners in MODES:
        for scale in (1, 2):
            layer = Upsample2D(scale, mode, align_corners)
            y = layer.forward(x)
            assert y.dtype == np.float32 and y is not x
            dy = np.ones_like(y)
            dx = layer.backward(dy)
            assert dx.dtype == np.float32 and dx.shape == x.shape and dx is not dy


def test_bilinear_rows_are_convex_weights_of_two_neighbours():
    for align_corners in (False, True):
        for size, scale in [(1, 3), (2, 2), (5, 3), (7, 2)]:
            m = bilinear_matrix(size, scale, align_corners)
            assert m.shape == (size * scale, size)
            np.testing.assert_allclose(m.sum(axis=1), 1.0, rtol=1e-15)
            assert ((m != 0).sum(axis=1) <= 2).all() and (m >= 0).all()
    corners = bilinear_matrix(4, 3, True)
    assert corners[0, 0] == 1.0 and corners[-1, -1] == 1.0


def test_long_axes_take_the_gather_path_and_agree_with_the_loops():
    """An axis longer than DENSE_MAX is interpolated by gathers, a short one by matmul."""
    x = randn(1, 1, 2, upsample.DENSE_MAX + 3, seed=8)
    for align_corners in (False, True):
        layer = Upsample2D(2, "bilinear", align_corners).astype(np.float64)
        y = layer.forward(x)
        np.testing.assert_allclose(y, ref.upsample_forward(x, 2, "bilinear", align_corners),
                                   rtol=1e-13, atol=1e-13)
        dy = randn(*y.shape, seed=9)
        np.testing.assert_allclose(layer.backward(dy), ref.upsample_backward(
            x.shape, dy, 2, "bilinear", align_corners), rtol=1e-13, atol=1e-13)


def test_upsample_output_shape_and_summary():
    model = minicnn.Sequential([Upsample2D((2, 3)), ZeroPad2D((1, 0, 2, 1)), Dropout2D(0.2),
                                Upsample2D(2, "bilinear", align_corners=True)],
                               input_shape=(3, 4, 5))
    text = model.summary(print_fn=None)
    for name, shape in [("upsample2d_1 (Upsample2D)", "(N, 3, 8, 15)"),
                        ("zeropad2d_1 (ZeroPad2D)", "(N, 3, 11, 16)"),
                        ("dropout2d_1 (Dropout2D)", "(N, 3, 11, 16)"),
                        ("upsample2d_2 (Upsample2D)", "(N, 3, 22, 32)")]:
        row = next(line for line in text.splitlines() if line.startswith(name))
        assert shape in row and row.split()[-1] == "0"
    assert model.forward(randn(2, 3, 4, 5, dtype=np.float32)).shape == (2, 3, 22, 32)


# =========================================================================== ZeroPad2D

@pytest.mark.parametrize("padding", PADDINGS, ids=str)
def test_zero_pad_gradcheck(padding):
    check(ZeroPad2D(padding), (2, 2, 4, 5))


@pytest.mark.parametrize("padding", PADDINGS + [0, (0, -2, -1, 0), (-3, 4, 0, 0)], ids=str)
def test_zero_pad_matches_the_loop_definition(padding):
    x = randn(2, 3, 4, 5, seed=4)
    layer = ZeroPad2D(padding).astype(np.float64)
    y = layer.forward(x)
    np.testing.assert_array_equal(y, ref.zero_pad_forward(x, *_sides(padding)))
    dy = randn(*y.shape, seed=5)
    np.testing.assert_array_equal(layer.backward(dy),
                                  ref.zero_pad_backward(x.shape, dy, *_sides(padding)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("padding", PADDINGS, ids=str)
def test_zero_pad_matches_torch(padding, dtype):
    torch = pytest.importorskip("torch")
    from torch_parity import torch_parity

    pad = torch.nn.ZeroPad2d(padding)
    torch_parity(ZeroPad2D(padding), lambda x, params: pad(x), randn(2, 3, 4, 5, seed=6),
                 dtype=dtype)


# =========================================================================== Dropout2D

def test_dropout2d_zeros_whole_channels_at_rate_p():
    x = np.ones((64, 50, 3, 4))
    layer = Dropout2D(0.3)
    y = layer.forward(x)
    per_channel = y.reshape(64, 50, -1)
    dropped = (per_channel == 0).all(axis=2)
    kept = (per_channel == 1 / 0.7).all(axis=2)
    assert (dropped | kept).all()                   # each channel all zero or all scaled
    assert abs(dropped.mean() - 0.3) < 0.03         # 3200 draws: the std is 0.008
    dy = randn(*x.shape, seed=7)
    np.testing.assert_array_equal(layer.backward(dy), dy * y)    # the gradient is the mask


def test_dropout2d_is_the_identity_in_eval_and_at_p_zero():
    x = randn(2, 3, 4, 4)
    assert Dropout2D(0.5).eval().forward(x) is x
    assert Dropout2D(0.0).forward(x) is x
    layer = Dropout2D(0.5).eval()
    layer.forward(x)
    dy = randn(2, 3, 4, 4, seed=1)
    assert layer.backward(dy) is dy


def test_dropout2d_is_reproducible_from_the_seed():
    x = np.ones((8, 16, 2, 2))
    minicnn.manual_seed(3)
    a = Dropout2D(0.5).forward(x)
    minicnn.manual_seed(3)
    b = Dropout2D(0.5).forward(x)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, Dropout2D(0.5).forward(x))


def test_dropout2d_takes_float16_input():
    x = np.ones((4, 50, 2, 2), np.float16)
    y = Dropout2D(0.5).forward(x)
    assert y.dtype == np.float16
    assert set(np.unique(y).tolist()) <= {0.0, 2.0} and 0 < np.count_nonzero(y) < y.size


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout2d_gradcheck(p):
    check(Dropout2D(p), (3, 4, 2, 3))
    check(Dropout2D(p).eval(), (2, 2, 2, 2))


def test_dropout_and_dropout2d_share_the_mask_draw():
    """At the same seed Dropout2D's (N, C, 1, 1) mask is Dropout's mask of that shape."""
    x = np.ones((6, 5, 1, 1))
    minicnn.manual_seed(11)
    a = Dropout(0.4).forward(x)
    minicnn.manual_seed(11)
    np.testing.assert_array_equal(Dropout2D(0.4).forward(x), a)


# =========================================================================== all three

LAYERS = [
    (lambda: Upsample2D(2), (4, 2, 3, 3)),
    (lambda: Upsample2D((2, 3), "bilinear"), (4, 2, 3, 2)),
    (lambda: Upsample2D(3, "bilinear", align_corners=True), (4, 1, 2, 3)),
    (lambda: ZeroPad2D(1), (4, 2, 3, 3)),
    (lambda: ZeroPad2D((-1, 2, 0, 1)), (4, 2, 3, 3)),
    (lambda: Dropout2D(0.3), (4, 3, 2, 2)),
]
LAYER_IDS = ["nearest", "bilinear", "bilinear-align", "pad", "pad-crop", "dropout2d"]


@pytest.mark.parametrize("make,shape", LAYERS, ids=LAYER_IDS)
def test_layer_contract(make, shape):
    check_layer(make(), shape)


def _model():
    return minicnn.Sequential([Conv2D(1, 2, 3, padding=1), ReLU(),
                               Upsample2D(2, "bilinear"), ZeroPad2D((1, 0, 2, -1)),
                               Dropout2D(0.25), Upsample2D((1, 2), "bilinear", True),
                               Upsample2D(2), Flatten(), Dense(2 * 14 * 28, 3)],
                              input_shape=(1, 3, 3))


def test_checkpoint_round_trip(tmp_path):
    model = _model()
    x = randn(2, 1, 3, 3, dtype=np.float32)
    model.forward(x, training=True)
    minicnn.save(model, tmp_path / "m.npz")
    loaded = minicnn.load(tmp_path / "m.npz")
    assert [layer.config() for layer in loaded.layers] == \
        [layer.config() for layer in model.layers]
    np.testing.assert_array_equal(loaded.forward(x, training=False),
                                  model.forward(x, training=False))


def test_onnx_export_matches_onnx_runtime(tmp_path):
    pytest.importorskip("onnxruntime")
    from test_onnx import export_and_compare

    onnx = pytest.importorskip("onnx")
    model = _model()
    export_and_compare(model, tmp_path, batch=3)
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("Resize") == 3 and ops.count("Pad") == 1
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
             for node in graph.node if node.op_type == "Resize"]
    assert [a["coordinate_transformation_mode"] for a in attrs] == \
        [b"pytorch_half_pixel", b"align_corners", b"asymmetric"]
    assert attrs[2]["nearest_mode"] == b"floor"


@pytest.mark.parametrize("layer", [Upsample2D(3), Upsample2D((2, 3), "bilinear"),
                                   Upsample2D(2, "bilinear", align_corners=True),
                                   Upsample2D(1, "bilinear"), ZeroPad2D((2, 1, 0, 3)),
                                   ZeroPad2D((-1, 0, 1, -2)), Dropout2D(0.5)], ids=repr)
@pytest.mark.parametrize("opset", [13, None], ids=["opset13", "default"])
def test_onnx_export_of_each_option(layer, opset, tmp_path):
    pytest.importorskip("onnxruntime")
    from test_onnx import export_and_compare

    export_and_compare(minicnn.Sequential([layer], input_shape=(2, 5, 4)), tmp_path,
                       opset=opset)


# =========================================================================== errors

@pytest.mark.parametrize("args,kind,needle", [
    ((0,), ValueError, "scale_factor"), ((-2,), ValueError, "scale_factor"),
    ((1.5,), ValueError, "1.5"), (("2",), ValueError, "scale_factor"),
    (((2,),), ValueError, "(2,)"), ((True,), ValueError, "scale_factor"),
    (((2, 0),), ValueError, "(2, 0)"), ((2, "bicubic"), ValueError, "bicubic"),
    ((2, "nearest", True), ValueError, "align_corners"),
    ((2, "bilinear", 1), TypeError, "align_corners"),
])
def test_upsample_rejects_bad_arguments(args, kind, needle):
    with pytest.raises(kind) as info:
        Upsample2D(*args)
    message = str(info.value)
    assert message.startswith("Upsample2D") and needle in message and "\n" not in message


@pytest.mark.parametrize("padding", [(1, 2, 3), 1.5, (1, 2, 3, 0.5), "1", True])
def test_zero_pad_rejects_bad_padding(padding):
    with pytest.raises(ValueError, match="^ZeroPad2D: padding must be") as info:
        ZeroPad2D(padding)
    assert "\n" not in str(info.value)


def test_zero_pad_refuses_to_crop_everything():
    with pytest.raises(ValueError, match="ZeroPad2D.*nothing"):
        ZeroPad2D((-2, -1, 0, 0)).output_shape((1, 4, 3))


@pytest.mark.parametrize("layer", [Upsample2D(2), ZeroPad2D(1), Dropout2D(0.5)], ids=repr)
def test_layers_want_four_dimensional_input(layer):
    with pytest.raises(ValueError, match=r"expected a 4-D input \(N, C, H, W\)"):
        layer.forward(randn(2, 3, 4))
    with pytest.raises(ValueError, match=r"expected input shape \(C, H, W\)"):
        layer.output_shape((3, 4))


@pytest.mark.parametrize("p", [1.0, -0.1])
def test_dropout2d_rejects_bad_p(p):
    with pytest.raises(ValueError, match=r"^Dropout2D: p must be in \[0, 1\)"):
        Dropout2D(p)
