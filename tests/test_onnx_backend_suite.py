"""ONNX's own backend tests as the oracle of ``import_onnx``.

Every test of ``onnx.backend.test.loader`` (kind "node", "pytorch-operator" and
"pytorch-converted") whose operators all lie in the importer's table is imported and run; its
output must match the stored one (the test's own rtol/atol), or the importer must refuse it
with the reason listed in ``REFUSED`` (a substring of its one-line message). A test that
passes although listed, or is refused although not listed, fails: the list is the record of
what minicnn does not support yet.

A node test feeds every operand as a graph input; a minicnn model has one input, so the first
is the data and the others are bound as initializers (constants, as the weights of a layer
are), from the test's stored values; and one output, so the first is compared and the
others (LayerNormalization's mean, MaxPool's indices) are dropped from the graph. Node tests
load from the case modules of the mapped operators only (the full
``load_model_tests(kind="node")`` builds 1,900 cases in ~8 s).

``python tests/test_onnx_backend_suite.py`` prints the counts per operator (pass /
unsupported) over the whole suite.
"""
from __future__ import annotations

import importlib
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import numpy_helper  # noqa: E402

from minicnn.onnx.importer import SUPPORTED_OPS, OnnxImportError, import_onnx  # noqa: E402

# The case modules of onnx.backend.test.case.node that hold tests of the mapped operators.
NODE_MODULES = ("conv", "gemm", "matmul", "maxpool", "averagepool", "globalaveragepool",
                "batch_normalization", "flatten", "reshape", "relu", "leakyrelu", "sigmoid",
                "tanh", "softmax", "add", "concat", "dropout", "identity", "elu", "softplus",
                "clip", "hardswish", "prelu", "logsoftmax", "gelu", "globalmaxpool",
                "layernormalization", "groupnormalization", "pad", "resize", "upsample",
                "convtranspose")

# What the importer refuses, by reason (a substring of its one-line message).
REFUSED_BY_REASON: dict[str, tuple[str, ...]] = {
    'operator Unsqueeze is not supported': (
        'test_AvgPool1d', 'test_AvgPool1d_stride',
    ),
    "minicnn's layers here are 2-D": (
        'test_AvgPool3d', 'test_AvgPool3d_stride', 'test_AvgPool3d_stride1_pad0_gpu_input',
        'test_Conv1d', 'test_Conv1d_dilated', 'test_Conv1d_groups', 'test_Conv1d_pad1',
        'test_Conv1d_pad1size1', 'test_Conv1d_pad2', 'test_Conv1d_pad2size1', 'test_Conv1d_stride',
        'test_Conv3d', 'test_Conv3d_dilated', 'test_Conv3d_dilated_strided', 'test_Conv3d_groups',
        'test_Conv3d_no_bias', 'test_Conv3d_stride', 'test_Conv3d_stride_padding',
        'test_MaxPool1d', 'test_MaxPool1d_stride', 'test_MaxPool1d_stride_padding_dilation',
        'test_MaxPool3d', 'test_MaxPool3d_stride', 'test_MaxPool3d_stride_padding',
        'test_operator_maxpool',
    ),
    "minicnn's BatchNorm is 1-D or 2-D": (
        'test_BatchNorm3d_eval', 'test_BatchNorm3d_momentum_eval',
    ),
    'minicnn pads with zeros': (
        'test_ConstantPad2d', 'test_ReflectionPad2d', 'test_ReplicationPad2d', 'test_constant_pad',
        'test_constant_pad_axes', 'test_constant_pad_negative_axes', 'test_operator_pad',
    ),
    'is not a float32 tensor': (
        'test_Embedding', 'test_Embedding_sparse', 'test_add_int16', 'test_add_int8',
        'test_add_uint16', 'test_add_uint32', 'test_add_uint64', 'test_add_uint8',
        'test_clip_default_int8_inbounds', 'test_clip_default_int8_inbounds_expanded',
        'test_clip_default_int8_max', 'test_clip_default_int8_min', 'test_edge_pad',
        'test_identity_opt', 'test_identity_sequence', 'test_maxpool_2d_uint8',
        'test_operator_add_broadcast', 'test_operator_add_size1_broadcast',
        'test_operator_add_size1_right_broadcast', 'test_operator_add_size1_singleton_broadcast',
        'test_operator_addconstant', 'test_operator_non_float_params', 'test_reflect_pad',
        'test_wrap_pad',
    ),
    "minicnn's PReLU has one slope or one per channel": (
        'test_PReLU_1d_multiparam', 'test_PReLU_2d_multiparam', 'test_PReLU_3d_multiparam',
        'test_prelu_broadcast', 'test_prelu_example',
    ),
    'minicnn reshapes only to (N, -1)': (
        'test_PixelShuffle', 'test_reshape_allowzero_reordered', 'test_reshape_extended_dims',
        'test_reshape_negative_dim', 'test_reshape_negative_extended_dims', 'test_reshape_one_dim',
        'test_reshape_reordered_all_dims', 'test_reshape_reordered_last_dims',
        'test_reshape_zero_and_negative_dim', 'test_reshape_zero_dim',
    ),
    'adding a constant': (
        'test_add', 'test_add_bcast',
    ),
    'has no dilation': (
        'test_averagepool_2d_dilations',
    ),
    'must be at most half the kernel': (
        'test_averagepool_2d_pads', 'test_averagepool_2d_pads_count_include_pad',
        'test_maxpool_2d_pads',
    ),
    'asymmetric pads': (
        'test_averagepool_2d_same_lower', 'test_averagepool_2d_same_upper',
        'test_maxpool_2d_same_lower', 'test_maxpool_2d_same_upper',
    ),
    'training_mode=1': (
        'test_batchnorm_epsilon_training_mode', 'test_batchnorm_example_training_mode',
    ),
    'minicnn has ReLU6 (Clip 0..6) and ReLU': (
        'test_clip', 'test_clip_default_inbounds', 'test_clip_default_max', 'test_clip_example',
        'test_clip_inbounds', 'test_clip_min_greater_than_max', 'test_clip_outbounds',
        'test_clip_splitbounds', 'test_operator_clip',
    ),
    'is a constant; minicnn has no layer': (
        'test_concat_1d_axis_0', 'test_concat_1d_axis_negative_1', 'test_concat_2d_axis_0',
        'test_concat_2d_axis_1', 'test_concat_2d_axis_negative_1',
        'test_concat_2d_axis_negative_2', 'test_concat_3d_axis_0', 'test_concat_3d_axis_1',
        'test_concat_3d_axis_2', 'test_concat_3d_axis_negative_1',
        'test_concat_3d_axis_negative_2', 'test_concat_3d_axis_negative_3',
        'test_operator_concat2',
    ),
    'give pads': (
        'test_convtranspose_autopad_same', 'test_convtranspose_kernel_shape',
        'test_convtranspose_output_shape',
    ),
    'keeps the batch axis (axis=1)': (
        'test_flatten_axis0', 'test_flatten_axis2', 'test_flatten_axis3',
        'test_flatten_negative_axis1', 'test_flatten_negative_axis2',
        'test_flatten_negative_axis4',
    ),
    'transA=1': (
        'test_gemm_all_attributes', 'test_gemm_transposeA',
    ),
    'does not broadcast to': (
        'test_gemm_default_matrix_bias',
    ),
    'minicnn normalises within a sample': (
        'test_layer_normalization_2d_axis0', 'test_layer_normalization_2d_axis_negative_2',
        'test_layer_normalization_4d_axis0', 'test_layer_normalization_4d_axis_negative_4',
    ),
    "minicnn's Dense takes (N, features)": (
        'test_matmul_1d_1d', 'test_matmul_1d_3d', 'test_matmul_3d', 'test_matmul_4d',
        'test_matmul_4d_1d', 'test_matmul_bcast',
    ),
    'must be a constant (an initializer)': (
        'test_operator_addmm',
    ),
    'operator Slice is not supported': (
        'test_operator_index',
    ),
    'operator Transpose is not supported': (
        'test_operator_permute2',
    ),
    "minicnn's Flatten takes (N, ...) of rank 2": (
        'test_operator_view',
    ),
    'minicnn upsamples H and W by integer factors': (
        'test_resize_downsample_scales_cubic',
        'test_resize_downsample_scales_cubic_A_n0p5_exclude_outside',
        'test_resize_downsample_scales_cubic_align_corners',
        'test_resize_downsample_scales_linear',
        'test_resize_downsample_scales_linear_align_corners',
        'test_resize_downsample_scales_linear_half_pixel_symmetric',
        'test_resize_downsample_scales_nearest', 'test_resize_downsample_sizes_cubic',
        'test_resize_downsample_sizes_linear_pytorch_half_pixel',
        'test_resize_downsample_sizes_nearest', 'test_resize_tf_crop_and_resize',
        'test_resize_tf_crop_and_resize_extrapolation_value',
        'test_resize_upsample_scales_linear_half_pixel_symmetric',
        'test_resize_upsample_sizes_cubic', 'test_resize_upsample_sizes_nearest',
    ),
    'antialias=1': (
        'test_resize_downsample_scales_cubic_antialias',
        'test_resize_downsample_scales_linear_antialias',
        'test_resize_downsample_sizes_cubic_antialias',
        'test_resize_downsample_sizes_linear_antialias',
    ),
    'minicnn resizes (N, C, H, W) on H and W': (
        'test_resize_downsample_sizes_nearest_not_larger',
        'test_resize_downsample_sizes_nearest_not_smaller',
        'test_resize_tf_crop_and_resize_axes_2_3', 'test_resize_tf_crop_and_resize_axes_3_2',
        'test_resize_upsample_scales_nearest_axes_2_3',
        'test_resize_upsample_scales_nearest_axes_3_2',
        'test_resize_upsample_sizes_nearest_axes_2_3',
        'test_resize_upsample_sizes_nearest_axes_3_2',
        'test_resize_upsample_sizes_nearest_not_larger',
        'test_resize_upsample_sizes_nearest_not_smaller',
    ),
    'minicnn resizes nearest or bilinear': (
        'test_resize_upsample_scales_cubic',
        'test_resize_upsample_scales_cubic_A_n0p5_exclude_outside',
        'test_resize_upsample_scales_cubic_align_corners',
        'test_resize_upsample_scales_cubic_asymmetric',
    ),
    "minicnn's nearest takes floor(d / s)": (
        'test_resize_upsample_sizes_nearest_ceil_half_pixel',
        'test_resize_upsample_sizes_nearest_floor_align_corners',
        'test_resize_upsample_sizes_nearest_round_prefer_ceil_asymmetric',
    ),
    'training_mode=true': (
        'test_training_dropout', 'test_training_dropout_default',
        'test_training_dropout_default_mask', 'test_training_dropout_mask',
        'test_training_dropout_zero_ratio', 'test_training_dropout_zero_ratio_mask',
    ),
}
REFUSED = {name: why for why, names in REFUSED_BY_REASON.items() for name in names}


def _skipping_1d_3d(cls, name, bases, dct) -> None:
    """onnx's case classes compute every case when defined; this skips the 1-D and 3-D
    cases (minicnn's layers are 2-D; the 3-D pooling references take ~9 s)."""
    for key in dct:
        if key.startswith("export") and "1d" not in key and "3d" not in key:
            np.random.seed(0)        # noqa: NPY002  # onnx's cases draw from the legacy seed
            getattr(cls, key)()
    type.__init__(cls, name, bases, dct)


def node_cases() -> list:
    import onnx.backend.test.case.base as base
    import onnx.backend.test.case.node as cases
    define = base._Exporter.__init__
    base._Exporter.__init__ = _skipping_1d_3d            # type: ignore[method-assign]
    try:
        for name in NODE_MODULES:
            importlib.import_module(f"onnx.backend.test.case.node.{name}")
    finally:
        base._Exporter.__init__ = define                  # type: ignore[method-assign]
    return list(cases._NodeTestCases)


def file_cases() -> list:
    from onnx.backend.test import loader
    return loader.load_model_tests(kind="pytorch-operator") + \
        loader.load_model_tests(kind="pytorch-converted")


def _model_and_data(case) -> tuple[object, list[tuple[list, list]]]:
    if case.model is not None:
        return case.model, [(list(i), list(o)) for i, o in case.data_sets]
    model = onnx.load(os.path.join(case.model_dir, "model.onnx"))
    sets = []
    for folder in sorted(Path(case.model_dir).glob("test_data_set_*")):
        read = [numpy_helper.to_array(onnx.load_tensor(str(p))) for p in
                sorted(folder.glob("input_*.pb"), key=lambda p: int(p.stem.split("_")[1]))]
        want = [numpy_helper.to_array(onnx.load_tensor(str(p))) for p in
                sorted(folder.glob("output_*.pb"), key=lambda p: int(p.stem.split("_")[1]))]
        sets.append((read, want))
    return model, sets


def ops_of(model) -> set[str]:
    return {n.op_type for n in model.graph.node}


def bind_extra_inputs(model, inputs: list) -> object:
    """A copy of ``model`` whose graph inputs after the first are initializers (their stored
    values), and whose only output is the first: a minicnn model has one input and one
    output (LayerNormalization's mean, MaxPool's indices, Dropout's mask are left out)."""
    bound = onnx.ModelProto()
    bound.CopyFrom(model)
    initialized = {i.name for i in bound.graph.initializer}
    data = [v for v in bound.graph.input if v.name not in initialized]
    for value, array in zip(data[1:], inputs[1:]):
        bound.graph.initializer.append(numpy_helper.from_array(np.asarray(array), value.name))
    keep = [v for v in bound.graph.input if v.name in initialized or v.name == data[0].name]
    del bound.graph.input[:]
    bound.graph.input.extend(keep)
    del bound.graph.output[1:]
    return bound


def run_case(case, tmp: Path) -> str | None:
    """None if the imported model matches every stored output; the importer's refusal
    otherwise. Raises AssertionError on a mismatch."""
    model, sets = _model_and_data(case)
    for k, (inputs, outputs) in enumerate(sets):
        path = tmp / f"{case.name}_{k}.onnx"
        onnx.save(bind_extra_inputs(model, inputs), str(path))
        try:
            imported = import_onnx(path)
        except OnnxImportError as exc:
            return str(exc)
        got = imported.forward(np.asarray(inputs[0]))
        want = outputs[0]
        assert got.shape == want.shape, (case.name, got.shape, want.shape)
        np.testing.assert_allclose(got, want, rtol=case.rtol, atol=case.atol,
                                   err_msg=case.name)
    return None


def supported_cases() -> list:
    cases = [c for c in node_cases() + file_cases()]
    out, seen = [], set()
    for case in cases:
        model, _ = _model_and_data(case) if case.model is None else (case.model, None)
        if case.name not in seen and ops_of(model) <= SUPPORTED_OPS:
            seen.add(case.name)
            out.append(case)
    return sorted(out, key=lambda c: c.name)


CASES = supported_cases() if __name__ != "__main__" else []


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_backend_case(case, tmp_path):
    refusal = run_case(case, tmp_path)
    if case.name in REFUSED:
        assert refusal is not None, f"{case.name} now imports and matches: drop it from REFUSED"
        assert REFUSED[case.name] in refusal, refusal
        assert "\n" not in refusal
    else:
        assert refusal is None, refusal


def test_the_suite_covers_every_mapped_operator():
    """Add and Concat join two computed tensors: a node test of them has two inputs, which a
    one-input model cannot take; Div is imported only as part of PyTorch's GELU pattern
    (tests/test_onnx_import.py covers the three)."""
    covered = set().union(*(ops_of(c.model if c.model is not None else
                                   _model_and_data(c)[0]) for c in CASES
                            if c.name not in REFUSED))
    from minicnn.onnx.importer import OPS
    assert set(OPS) - {"Add", "Concat", "Div"} <= covered, set(OPS) - covered


def report(tmp: Path) -> None:
    """Per operator: tests that pass, are refused (with why), and are not in the table."""
    from onnx.backend.test import loader
    every = loader.load_model_tests(kind="node") + file_cases()
    passed: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    outside: Counter[str] = Counter()
    for case in every:
        model, _ = _model_and_data(case)
        ops = ops_of(model)
        main = sorted(ops - {"Constant"})[0] if ops - {"Constant"} else "Constant"
        if not ops <= SUPPORTED_OPS:
            for op in ops - SUPPORTED_OPS:
                outside[op] += 1
            continue
        try:
            why = run_case(case, tmp)
        except (NotImplementedError, TypeError, ValueError) as exc:   # sequence/optional I/O
            why = f"{case.name}: the harness cannot bind its inputs ({type(exc).__name__})"
        (refused if why else passed)[main] += 1
    print(f"{'operator':<22}{'pass':>6}{'refused':>9}")
    for op in sorted(set(passed) | set(refused)):
        print(f"{op:<22}{passed[op]:>6}{refused[op]:>9}")
    print(f"total: {sum(passed.values())} pass, {sum(refused.values())} refused; "
          f"{len(every) - sum(passed.values()) - sum(refused.values())} tests use operators "
          f"outside the table ({len(outside)} operators)")


if __name__ == "__main__":
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        report(Path(folder))
