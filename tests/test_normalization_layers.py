"""BatchNorm1D, LayerNorm and GroupNorm (and BatchNorm2D's float16 path): the naive loop
definitions in ``reference.py``, gradient checks, PyTorch parity (float32 and float64, running
statistics included), the layer contract, mixed precision, checkpoints, summaries, ONNX export
against ONNX Runtime, and one-line errors."""
from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from conftest import randn

import minicnn
from minicnn.layers import Conv2D, Dense, Flatten, ReLU
from minicnn.layers.layer_norm import GroupNorm, LayerNorm
from minicnn.layers.normalization import BatchNorm1D, BatchNorm2D
from minicnn.testing.check_layer import check_layer
from minicnn.testing.gradient_check import gradcheck

EPS, TOL = 1e-5, 1e-6          # as tests/test_layers.py (see the comment there)
LAYER_NORMS = [((5,), (3, 5)), ((4, 3), (2, 4, 3)), ((2, 3, 4), (3, 2, 3, 4)),
               ((3,), (2, 4, 3))]
LN_IDS = ["1-dim", "2-dim", "3-dim", "1-dim-of-3d"]
GROUPS = [(1, 6), (3, 6), (6, 6)]
GN_IDS = ["1-group", "3-groups", "C-groups"]
BN1D_SHAPES = [(5, 4), (3, 4, 6)]
BN1D_IDS = ["NC", "NCL"]

pytestmark = pytest.mark.usefixtures("seeded")


def check(layer, shape, **kwargs):
    errors = gradcheck(layer, shape, eps=EPS, tol=TOL, **kwargs)
    assert errors and max(errors.values()) < TOL, errors
    return errors


def randomize(layer, seed=1):
    """Non-trivial affine parameters (the defaults 1 and 0 hide a missing or swapped term)."""
    for k, p in enumerate(layer.parameters()):
        p.data[...] = (1.0 if p.name == "weight" else 0.0) + 0.5 * randn(*p.shape, seed=seed + k)
    return layer


def moved_batchnorm(layer, shape, steps=3):
    """A BatchNorm whose running statistics have moved away from 0 and 1."""
    for k in range(steps):
        layer.forward((2 + 3 * randn(*shape, seed=20 + k)).astype(layer.dtype))
    return layer


# =========================================================================== definitions

def _assert_matches(layer, x, want, grad_out):
    """forward and backward (float64) equal the loop definition's y, dx, dweight, dbias."""
    y_ref, dx_ref, dw_ref, db_ref = want
    np.testing.assert_allclose(layer.forward(x), y_ref, rtol=1e-10, atol=1e-12)
    layer.zero_grad()
    np.testing.assert_allclose(layer.backward(grad_out), dx_ref, rtol=1e-9, atol=1e-11)
    if dw_ref is not None:
        np.testing.assert_allclose(layer.weight.grad, dw_ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(layer.bias.grad, db_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", BN1D_SHAPES, ids=BN1D_IDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batchnorm1d_matches_the_definition(shape, training):
    layer = randomize(BatchNorm1D(shape[1])).astype(np.float64)
    moved_batchnorm(layer, shape).train(training)
    x, dy = 1 + 2 * randn(*shape, seed=3), randn(*shape, seed=4)
    running = None if training else (layer.running_mean.copy(), layer.running_var.copy())
    want = ref.batchnorm_reference(x, layer.weight.data, layer.bias.data, 1e-5, dy, running)
    _assert_matches(layer, x, want, dy)


def test_batchnorm1d_running_statistics_match_the_definition():
    layer = BatchNorm1D(3, momentum=0.2).astype(np.float64)
    batches = [1 + 2 * randn(4, 3, 5, seed=k) for k in range(3)]
    for x in batches:
        layer.forward(x)
    mean, var = ref.running_statistics_reference(batches, momentum=0.2)
    np.testing.assert_allclose(layer.running_mean, mean, rtol=1e-12)
    np.testing.assert_allclose(layer.running_var, var, rtol=1e-12)


@pytest.mark.parametrize("dims,shape", LAYER_NORMS, ids=LN_IDS)
def test_layernorm_matches_the_definition(dims, shape):
    layer = randomize(LayerNorm(dims)).astype(np.float64)
    x, dy = 1 + 2 * randn(*shape, seed=3), randn(*shape, seed=4)
    want = ref.layernorm_reference(x, len(dims), layer.weight.data, layer.bias.data, 1e-5, dy)
    _assert_matches(layer, x, want, dy)


@pytest.mark.parametrize("groups,channels", GROUPS, ids=GN_IDS)
@pytest.mark.parametrize("shape", [(2, 6, 3, 2), (3, 6, 4), (4, 6)], ids=["4d", "3d", "2d"])
def test_groupnorm_matches_the_definition(groups, channels, shape):
    layer = randomize(GroupNorm(groups, channels)).astype(np.float64)
    x, dy = 1 + 2 * randn(*shape, seed=3), randn(*shape, seed=4)
    want = ref.groupnorm_reference(x, groups, layer.weight.data, layer.bias.data, 1e-5, dy)
    _assert_matches(layer, x, want, dy)


def test_without_affine_match_the_definition():
    x, dy = randn(3, 4, 5, seed=3), randn(3, 4, 5, seed=4)
    layer = LayerNorm((4, 5), eps=1e-3, elementwise_affine=False).astype(np.float64)
    assert layer.parameters() == []
    _assert_matches(layer, x, ref.layernorm_reference(x, 2, None, None, 1e-3, dy), dy)
    layer = GroupNorm(2, 4, eps=1e-3, affine=False)
    assert layer.parameters() == []
    _assert_matches(layer, x, ref.groupnorm_reference(x, 2, None, None, 1e-3, dy), dy)


# =========================================================================== gradient checks

@pytest.mark.parametrize("shape", BN1D_SHAPES + [(2, 3)], ids=BN1D_IDS + ["N2"])
def test_gradcheck_batchnorm1d_training(shape):
    check(randomize(BatchNorm1D(shape[1])), shape)


@pytest.mark.parametrize("shape", BN1D_SHAPES, ids=BN1D_IDS)
def test_gradcheck_batchnorm1d_eval(shape):
    layer = moved_batchnorm(randomize(BatchNorm1D(shape[1])), shape).eval()
    check(layer, shape)


@pytest.mark.parametrize("dims,shape", LAYER_NORMS, ids=LN_IDS)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_gradcheck_layernorm(dims, shape, affine):
    errors = check(randomize(LayerNorm(dims, elementwise_affine=affine)), shape)
    assert set(errors) == ({"input", "weight", "bias"} if affine else {"input"})


@pytest.mark.parametrize("groups,channels", GROUPS, ids=GN_IDS)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_gradcheck_groupnorm(groups, channels, affine):
    errors = check(randomize(GroupNorm(groups, channels, affine=affine)), (2, channels, 3, 2))
    assert set(errors) == ({"input", "weight", "bias"} if affine else {"input"})


def test_backward_without_input_grad_still_accumulates_parameter_gradients():
    for layer, shape in ((BatchNorm1D(4), (5, 4)), (LayerNorm(4), (3, 4)),
                         (GroupNorm(2, 4), (3, 4, 2))):
        layer = randomize(layer).astype(np.float64)
        x, dy = randn(*shape, seed=2), randn(*shape, seed=3)
        layer.forward(x)
        layer.backward(dy)
        full = [p.grad.copy() for p in layer.parameters()]
        layer.zero_grad()
        layer.forward(x)
        assert layer.backward(dy, input_grad=False) is None
        for p, g in zip(layer.parameters(), full):
            np.testing.assert_array_equal(p.grad, g)


# =========================================================================== PyTorch

def _bn(x, p):
    import torch.nn.functional as F
    return F.batch_norm(x, None, None, p["weight"], p["bias"], True, 0.1, 1e-5)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", BN1D_SHAPES, ids=BN1D_IDS)
def test_batchnorm1d_parity_with_torch(shape, dtype):
    pytest.importorskip("torch")
    from torch_parity import torch_parity
    torch_parity(randomize(BatchNorm1D(shape[1])), _bn, 1 + 2 * randn(*shape, seed=5), dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", BN1D_SHAPES, ids=BN1D_IDS)
def test_batchnorm1d_eval_and_running_statistics_match_torch(shape, dtype):
    torch = pytest.importorskip("torch")
    from torch_parity import torch_parity
    ours = randomize(BatchNorm1D(shape[1], momentum=0.3)).astype(dtype)
    theirs = torch.nn.BatchNorm1d(shape[1], momentum=0.3).to(torch.float64 if dtype ==
                                                             np.float64 else torch.float32)
    rtol = 1e-12 if dtype == np.float64 else 1e-6
    for k in range(4):
        x = (2 + 3 * randn(*shape, seed=10 + k)).astype(dtype)
        ours.forward(x)
        theirs(torch.tensor(x))
    assert ours.running_mean.dtype == dtype and ours.running_var.dtype == dtype
    np.testing.assert_allclose(ours.running_mean, theirs.running_mean.numpy(), rtol=rtol)
    np.testing.assert_allclose(ours.running_var, theirs.running_var.numpy(), rtol=rtol)
    mean, var = (torch.tensor(ours.running_mean), torch.tensor(ours.running_var))

    def eval_bn(x, p):
        import torch.nn.functional as F
        return F.batch_norm(x, mean, var, p["weight"], p["bias"], False, 0.3, 1e-5)

    torch_parity(ours, eval_bn, 1 + 2 * randn(*shape, seed=5), dtype, training=False)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("dims,shape", LAYER_NORMS, ids=LN_IDS)
def test_layernorm_parity_with_torch(dims, shape, dtype):
    pytest.importorskip("torch")
    import torch.nn.functional as F
    from torch_parity import torch_parity
    torch_parity(randomize(LayerNorm(dims, eps=1e-4)),
                 lambda x, p: F.layer_norm(x, dims, p["weight"], p["bias"], 1e-4),
                 1 + 2 * randn(*shape, seed=5), dtype)
    torch_parity(LayerNorm(dims, elementwise_affine=False), lambda x, p: F.layer_norm(x, dims),
                 randn(*shape, seed=6), dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("groups,channels,shape", [
    (g, c, (3, c, 4, 5)) for g, c in GROUPS] + [(3, 6, (2, 6, 7)), (1, 12, (4, 12)),
                                                (2, 12, (4, 12))],
    ids=[f"4d-{i}" for i in GN_IDS] + ["3d-3-groups", "2d-1-group", "2d-2-groups"])
def test_groupnorm_parity_with_torch(groups, channels, shape, dtype):
    """(A group of one value has x_hat = 0 and dx = 0 exactly, which PyTorch computes as
    rounding noise: not compared.)"""
    pytest.importorskip("torch")
    import torch.nn.functional as F
    from torch_parity import torch_parity
    torch_parity(randomize(GroupNorm(groups, channels, eps=1e-3)),
                 lambda x, p: F.group_norm(x, groups, p["weight"], p["bias"], 1e-3),
                 1 + 2 * randn(*shape, seed=5), dtype)
    torch_parity(GroupNorm(groups, channels, affine=False),
                 lambda x, p: F.group_norm(x, groups), randn(*shape, seed=6), dtype)


# =========================================================================== contract

@pytest.mark.parametrize("make,shape", [
    (lambda: BatchNorm1D(4), (5, 4)), (lambda: BatchNorm1D(3), (4, 3, 5)),
    (lambda: LayerNorm(5), (3, 5)), (lambda: LayerNorm((3, 4)), (4, 2, 3, 4)),
    (lambda: LayerNorm((2, 3, 4), elementwise_affine=False), (3, 2, 3, 4)),
    (lambda: GroupNorm(1, 4), (4, 4, 3)), (lambda: GroupNorm(2, 4), (4, 4, 3, 2)),
    (lambda: GroupNorm(4, 4, affine=False), (4, 4, 2, 2)), (lambda: GroupNorm(2, 4), (4, 4)),
], ids=["bn1d", "bn1d-ncl", "ln1", "ln2", "ln3-plain", "gn1", "gn2", "gn4-plain", "gn-nc"])
def test_check_layer(make, shape):
    check_layer(randomize(make()), shape)


def test_per_sample_claims():
    bn = BatchNorm1D(3)
    assert bn.per_sample is False and bn.eval().per_sample is True
    assert LayerNorm(3).per_sample is True and GroupNorm(1, 3).per_sample is True
    # the claim is honest: normalising a batch in halves changes nothing
    x = randn(6, 4, 3, dtype=np.float32)
    for layer in (LayerNorm((4, 3)), GroupNorm(2, 4)):
        whole = layer.forward(x)
        np.testing.assert_array_equal(np.concatenate([layer.forward(x[:3]),
                                                      layer.forward(x[3:])]), whole)


def _model():
    return minicnn.Sequential([
        Conv2D(2, 4, 3, padding=1), GroupNorm(2, 4), ReLU(), LayerNorm((4, 5, 5)), Flatten(),
        Dense(100, 6), BatchNorm1D(6), LayerNorm(6, elementwise_affine=False)],
        input_shape=(2, 5, 5))


def test_checkpoint_round_trip_keeps_running_statistics(tmp_path):
    minicnn.manual_seed(3)
    model = _model()
    for layer in model.layers:
        if isinstance(layer, GroupNorm | LayerNorm | BatchNorm1D) and layer.parameters():
            randomize(layer)
    x = randn(4, 2, 5, 5, dtype=np.float32)
    for _ in range(2):
        model.forward(x, training=True)                 # moves BatchNorm1D's statistics
    bn = model.layers[6]
    assert not np.allclose(bn.running_mean, 0) and not np.allclose(bn.running_var, 1)
    loaded = minicnn.load(minicnn.save(model, tmp_path / "m.npz"))
    assert [type(a) for a in loaded.layers] == [type(a) for a in model.layers]
    assert loaded.layers[3].config() == {"normalized_shape": (4, 5, 5), "eps": 1e-5,
                                         "elementwise_affine": True}
    assert loaded.layers[1].config() == {"num_groups": 2, "num_channels": 4, "eps": 1e-5,
                                         "affine": True}
    np.testing.assert_array_equal(loaded.layers[6].running_mean, bn.running_mean)
    np.testing.assert_array_equal(loaded.layers[6].running_var, bn.running_var)
    with minicnn.no_grad():
        np.testing.assert_array_equal(loaded.forward(x, training=False),
                                      model.forward(x, training=False))


def test_summary_shapes():
    text = _model().summary(print_fn=None)
    for name, shape, params in [("groupnorm_1 (GroupNorm)", "(N, 4, 5, 5)", 8),
                                ("layernorm_1 (LayerNorm)", "(N, 4, 5, 5)", 200),
                                ("batchnorm1d_1 (BatchNorm1D)", "(N, 6)", 12),
                                ("layernorm_2 (LayerNorm)", "(N, 6)", 0)]:
        row = next(line for line in text.splitlines() if line.startswith(name))
        assert shape in row and row.split()[-1] == str(params)
    assert BatchNorm1D(3).output_shape((3, 7)) == (3, 7)


# =========================================================================== precision

def _half_twin(layer):
    """What ``fit(..., precision="fp16")``'s working copy holds: float16 parameters, the
    state arrays (running statistics) left float32."""
    import copy
    twin = copy.deepcopy(layer)
    for p in twin.parameters():
        p.data, p.grad = p.data.astype(np.float16), p.grad.astype(np.float16)
    return twin


@pytest.mark.parametrize("make,shape", [
    (lambda: BatchNorm2D(6), (8, 6, 5, 5)), (lambda: BatchNorm1D(6), (16, 6)),
    (lambda: BatchNorm1D(6), (8, 6, 7)), (lambda: LayerNorm((5, 5)), (4, 6, 5, 5)),
    (lambda: GroupNorm(3, 6), (4, 6, 5, 5)), (lambda: LayerNorm(6, elementwise_affine=False),
                                              (8, 6)),
], ids=["bn2d", "bn1d", "bn1d-ncl", "ln", "gn", "ln-plain"])
def test_float16_is_close_to_float32_with_float32_statistics(make, shape):
    """Large offsets make float16 statistics wrong (a float16 sum of 2**8 values near 60 is
    off by several units); computed in float32 they are as good as the input allows."""
    full = randomize(make())
    half = _half_twin(full)
    x16 = (60 + 4 * randn(*shape, seed=3)).astype(np.float16)
    dy16 = randn(*shape, seed=4).astype(np.float16)
    x, dy = x16.astype(np.float32), dy16.astype(np.float32)   # the same values in float32
    for _ in range(2):                                 # the second sees moved statistics
        y, y16 = full.forward(x), half.forward(x16)
        assert all(a.dtype == np.float32 for a in half.__dict__["_saved"][:2])
        full.zero_grad()
        half.zero_grad()
        dx, dx16 = full.backward(dy), half.backward(dy16)
        assert y16.dtype == np.float16 and dx16.dtype == np.float16
        # float16 keeps 11 bits: an output rounded once is within 2**-11 of its size
        np.testing.assert_allclose(y16, y, rtol=2e-3, atol=2e-3 * np.abs(y).max())
        np.testing.assert_allclose(dx16, dx, rtol=1e-2, atol=4e-3 * np.abs(dx).max())
        for p, q in zip(full.parameters(), half.parameters()):
            assert q.grad.dtype == np.float16
            np.testing.assert_allclose(q.grad, p.grad, rtol=1e-2, atol=2e-3 * np.abs(p.grad).max())
    for name, value in half.state_arrays().items():
        assert value.dtype == np.float32, name
        np.testing.assert_allclose(value, full.state_arrays()[name], rtol=1e-5)
    if isinstance(full, BatchNorm1D | BatchNorm2D):
        with minicnn.no_grad():
            full.eval(), half.eval()
            np.testing.assert_allclose(half.forward(x16), full.forward(x),
                                       rtol=2e-3, atol=2e-3 * np.abs(y).max())


def test_fit_in_fp16_keeps_float32_masters_and_running_statistics():
    from minicnn import data
    from minicnn.training import SGD, fit
    from minicnn.training.precision import Precision

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 64)
    x = rng.integers(0, 100, (64, 6, 6)).astype(np.uint8)
    x[np.arange(64), 2 * y, 2 * y] = 255
    runs = {}
    for precision in ("fp32", Precision("fp16", init_scale=2.0 ** 8)):
        minicnn.manual_seed(0)
        model = minicnn.Sequential([
            Conv2D(1, 4, 3, padding=1), GroupNorm(2, 4), ReLU(), Flatten(), Dense(144, 8),
            BatchNorm1D(8), LayerNorm(8), Dense(8, 3)], input_shape=(1, 6, 6))
        loader = data.DataLoader(x, y, batch_size=16, shuffle=True, seed=0,
                                 transform=data.Normalize(0.25, 0.3))
        history = fit(model, loader, 2, SGD(model.parameters(), lr=0.05), progress=False,
                      verbose=False, precision=precision)
        runs[str(precision)] = model, history
    (ref, _), (half, history) = runs["fp32"], runs["Precision('fp16')"]
    assert sum(history["skipped_steps"]) == 0
    assert all(p.data.dtype == np.float32 for p in half.parameters())
    bn_ref, bn = ref.layers[5], half.layers[5]
    assert bn.running_mean.dtype == np.float32 and bn.running_var.dtype == np.float32
    assert not np.allclose(bn.running_var, 1)                            # they moved
    np.testing.assert_allclose(bn.running_mean, bn_ref.running_mean, rtol=2e-2, atol=2e-3)
    np.testing.assert_allclose(bn.running_var, bn_ref.running_var, rtol=5e-3)
    for a, b in zip(ref.parameters(), half.parameters()):
        assert np.linalg.norm(a.data - b.data) <= 2e-2 * np.linalg.norm(a.data)


@pytest.mark.parametrize("make,shape", [
    (lambda: BatchNorm2D(3), (4, 3, 2, 2)), (lambda: BatchNorm1D(3), (4, 3)),
    (lambda: LayerNorm(3), (4, 3)), (lambda: GroupNorm(3, 3), (4, 3, 2)),
], ids=["bn2d", "bn1d", "ln", "gn"])
def test_float32_stays_float32(make, shape):
    layer = make()
    x = randn(*shape, dtype=np.float32)
    y = layer.forward(x)
    saved = layer.__dict__["_saved"]
    assert all(a.dtype == np.float32 for a in saved if hasattr(a, "dtype"))
    dx = layer.backward(randn(*shape, seed=1, dtype=np.float32))
    assert y.dtype == dx.dtype == np.float32
    assert all(p.grad.dtype == np.float32 for p in layer.parameters())
    assert all(v.dtype == np.float32 for v in layer.state_arrays().values())


# =========================================================================== ONNX

def _onnx_models():
    rng = np.random.default_rng(4)
    bn = randomize(BatchNorm1D(5, eps=1e-3))
    bn.running_mean = rng.standard_normal(5).astype(np.float32)
    bn.running_var = rng.uniform(0.5, 2.0, 5).astype(np.float32)
    return {
        "bn1d": minicnn.Sequential([Dense(6, 5), bn], input_shape=(6,)),
        "ln-last": minicnn.Sequential([Dense(6, 5), randomize(LayerNorm(5, eps=1e-3))],
                                      input_shape=(6,)),
        "ln-3d": minicnn.Sequential([Conv2D(2, 3, 3, padding=1), randomize(LayerNorm((3, 4, 4)))],
                                    input_shape=(2, 4, 4)),
        "ln-plain": minicnn.Sequential([LayerNorm((4, 4), elementwise_affine=False)],
                                       input_shape=(2, 4, 4)),
        "gn": minicnn.Sequential([Conv2D(2, 6, 3, padding=1), randomize(GroupNorm(3, 6))],
                                 input_shape=(2, 4, 5)),
        "gn-plain-3d": minicnn.Sequential([GroupNorm(2, 4, affine=False)], input_shape=(4, 7)),
        "gn-nc": minicnn.Sequential([Dense(6, 4), randomize(GroupNorm(2, 4))], input_shape=(6,)),
    }


@pytest.mark.parametrize("opset", [13, 17, 18])
@pytest.mark.parametrize("name", list(_onnx_models()))
def test_onnx_export_matches_onnx_runtime(name, opset, tmp_path):
    pytest.importorskip("onnxruntime")
    from test_onnx import export_and_compare
    onnx = pytest.importorskip("onnx")
    model = _onnx_models()[name]
    export_and_compare(model, tmp_path, opset=opset, batch=4)
    ops = {node.op_type for node in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    if name == "bn1d":
        assert "BatchNormalization" in ops
    elif name.startswith("ln"):
        assert ("LayerNormalization" in ops) == (opset >= 17)
        assert ("ReduceMean" in ops) == (opset < 17)
    else:
        assert "ReduceMean" in ops and not any(op.startswith("GroupNorm") for op in ops)


# =========================================================================== errors

@pytest.mark.parametrize("make,match", [
    (lambda: GroupNorm(4, 6), r"^GroupNorm: num_groups must divide num_channels, got "
                              r"num_groups=4 for num_channels=6$"),
    (lambda: GroupNorm(0, 6), "GroupNorm: num_groups must be a positive int"),
    (lambda: GroupNorm(2, 4, eps=0), "GroupNorm: eps must be a positive number"),
    (lambda: LayerNorm(()), "LayerNorm: normalized_shape must be"),
    (lambda: LayerNorm((3, 0)), "LayerNorm: normalized_shape must be a positive int"),
    (lambda: LayerNorm("abc"), "LayerNorm: normalized_shape must be"),
    (lambda: BatchNorm1D(0), "BatchNorm1D: num_features must be a positive int"),
    (lambda: BatchNorm1D(3, momentum=2), "BatchNorm1D: expected 0 <= momentum <= 1"),
])
def test_bad_arguments_are_refused_in_one_line(make, match):
    with pytest.raises(ValueError, match=match) as info:
        make()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("layer,shape,match", [
    (BatchNorm1D(3), (2, 3, 4, 5), r"BatchNorm1D.*expected a 2-D input \(N, C\) or \(N, C, L\)"),
    (BatchNorm1D(3), (2, 4), "BatchNorm1D.*expected 3 input channels"),
    (BatchNorm1D(3), (1, 3), "BatchNorm1D.*more than one value per channel"),
    (LayerNorm((4, 5)), (2, 5, 4), r"LayerNorm.*expected input shape \(N, \.\.\., 4, 5\)"),
    (LayerNorm((4, 5)), (4, 5), r"LayerNorm.*expected input shape \(N, \.\.\., 4, 5\)"),
    (GroupNorm(2, 4), (2, 6, 3), "GroupNorm.*expected 4 input channels"),
    (GroupNorm(2, 4), (4,), r"GroupNorm.*expected a 2-D input \(N, C, \.\.\.\)"),
])
def test_bad_input_is_refused_in_one_line(layer, shape, match):
    with pytest.raises(ValueError, match=match) as info:
        layer.forward(randn(*shape, dtype=np.float32))
    assert "\n" not in str(info.value)


def test_bad_per_sample_shapes_are_refused_by_output_shape():
    with pytest.raises(ValueError, match=r"BatchNorm1D.*\(N, C\) or \(N, C, L\)"):
        minicnn.Sequential([BatchNorm1D(3)], input_shape=(3, 4, 4))
    with pytest.raises(ValueError, match=r"LayerNorm.*expected input shape \(N, \.\.\., 6\)"):
        minicnn.Sequential([LayerNorm(6)], input_shape=(4, 5))
    with pytest.raises(ValueError, match=r"GroupNorm.*expected input shape \(4, \.\.\.\)"):
        minicnn.Sequential([GroupNorm(2, 4)], input_shape=(3, 5))


@pytest.mark.parametrize("grad_layout", ["channels-last", "nchw"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batchnorm2d_on_channels_last_memory_equals_nchw(grad_layout, training):
    """Conv2D's output is channels-last in memory: BatchNorm2D then normalises its (N*H*W, C)
    rows. Same output (and its channels-last layout), input and parameter gradients and
    running statistics as for the same values in NCHW memory, whatever the gradient's layout."""
    x = randn(3, 4, 5, 6)                                      # float64, NCHW memory
    last = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    g = randn(3, 4, 5, 6)
    g_in = np.ascontiguousarray(g.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2) \
        if grad_layout == "channels-last" else g
    layers = [BatchNorm2D(4).astype(np.float64) for _ in range(2)]
    for layer in layers:
        layer.weight.data[...] = randn(4)
        layer.bias.data[...] = randn(4)
        layer.running_var[...] = 1 + randn(4) ** 2
        layer.train(training)
    a, b = layers
    ya, yb = a.forward(x), b.forward(last)
    assert yb.transpose(0, 2, 3, 1).flags.c_contiguous           # channels-last out
    np.testing.assert_allclose(yb, ya, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b.backward(g_in), a.backward(g), rtol=1e-11, atol=1e-12)
    for name in ("weight", "bias"):
        np.testing.assert_allclose(getattr(b, name).grad, getattr(a, name).grad, rtol=1e-11,
                                   atol=1e-12)
    np.testing.assert_allclose(b.running_mean, a.running_mean, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(b.running_var, a.running_var, rtol=1e-12, atol=1e-14)
