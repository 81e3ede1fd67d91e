"""safetensors weights: minicnn's own round trip, the byte layout, PyTorch state_dicts (saved by
safetensors.torch, or by this module's writer from a state_dict) loaded by name, by module
order and by shape, with Dense's transpose and BatchNorm's running statistics; one-line
errors naming the file and the tensor."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import minicnn
from minicnn.layers.conv import Conv2D
from minicnn.layers.dense import Dense
from minicnn.layers.flatten import Flatten
from minicnn.layers.normalization import BatchNorm2D
from minicnn.layers.pooling import MaxPool2D
from minicnn.saving.safetensors import (
    SafetensorsError,
    load_weights,
    read_safetensors,
    save_weights,
    write_safetensors,
)

RTOL = 1e-5


def small_cnn() -> minicnn.Sequential:
    return minicnn.Sequential([Conv2D(1, 4, 3, padding=1), BatchNorm2D(4), minicnn.layers.ReLU(),
                               MaxPool2D(2), Flatten(), Dense(64, 3)], input_shape=(1, 8, 8))


def randomized(model):
    rng = np.random.default_rng(1)
    for p in model.parameters():
        p.data[...] = rng.standard_normal(p.shape)
    bn = model.layers[1]
    bn.running_mean = rng.standard_normal(4).astype(np.float32)
    bn.running_var = rng.uniform(0.5, 2, 4).astype(np.float32)
    return model


def out(model, x):
    with minicnn.no_grad():
        return model.forward(x, training=False)


X = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)


def test_round_trip_and_byte_layout(tmp_path):
    model = randomized(small_cnn())
    path = save_weights(model, tmp_path / "m.safetensors")
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    assert n % 8 == 0 and header["__metadata__"]["format"] == "minicnn"
    assert header["dense_1.weight"] == {"dtype": "F32", "shape": [64, 3],
                                        "data_offsets": header["dense_1.weight"]["data_offsets"]}
    begin, end = header["batchnorm2d_1.running_var"]["data_offsets"]
    np.testing.assert_array_equal(np.frombuffer(raw[8 + n + begin:8 + n + end], "<f4"),
                                  model.layers[1].running_var)
    fresh = load_weights(small_cnn(), path)
    np.testing.assert_array_equal(out(fresh, X), out(model, X))


def test_the_safetensors_library_reads_ours():
    pytest.importorskip("safetensors")
    import tempfile

    from safetensors.numpy import load_file
    with tempfile.TemporaryDirectory() as folder:
        model = randomized(small_cnn())
        path = save_weights(model, f"{folder}/m.safetensors")
        loaded = load_file(str(path))
    np.testing.assert_array_equal(loaded["conv2d_1.weight"], model.layers[0].weight.data)


# =========================================================================== PyTorch

def torch_cnn(torch, named: bool):
    torch.manual_seed(0)
    if not named:
        return torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
            torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(64, 3))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.bn1 = torch.nn.BatchNorm2d(4)      # 'bn1' sorts before 'conv1'
            self.fc = torch.nn.Linear(64, 3)

        def forward(self, x):
            x = torch.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
            return self.fc(x.flatten(1))
    return Net()


def trained_state(torch, net):
    net.train()
    for _ in range(3):                    # running statistics move away from 0 and 1
        net(torch.randn(16, 1, 8, 8))
    net.eval()
    return {k: v.contiguous() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("named", [False, True], ids=["sequential", "named_modules"])
@pytest.mark.parametrize("writer", ["safetensors.torch", "own"])
def test_pytorch_state_dict_loads(named, writer, tmp_path):
    torch = pytest.importorskip("torch")
    net = torch_cnn(torch, named)
    state = trained_state(torch, net)
    assert any(k.endswith("num_batches_tracked") for k in state)
    path = tmp_path / "torch.safetensors"
    if writer == "own":
        write_safetensors(path, {k: v.numpy() for k, v in state.items()})
    else:
        pytest.importorskip("safetensors")
        from safetensors.torch import save_file
        save_file(state, str(path))
    model = load_weights(small_cnn(), path)
    with torch.no_grad():
        want = net(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(out(model, X), want, rtol=RTOL, atol=1e-6)
    np.testing.assert_array_equal(model.layers[5].weight.data, state["fc.weight" if named else
                                                                     "5.weight"].numpy().T)


def test_natural_order_of_sequential_indices(tmp_path):
    """Modules 0..10 of a Sequential: '10' comes after '9', not after '1'."""
    rng = np.random.default_rng(0)
    sizes = [3 + i for i in range(12)]
    state = {}
    for i in range(11):
        state[f"{i}.weight"] = rng.standard_normal((sizes[i + 1], sizes[i])).astype(np.float32)
    path = write_safetensors(tmp_path / "mlp.safetensors", state)
    model = minicnn.Sequential([Dense(sizes[i], sizes[i + 1], bias=False) for i in range(11)])
    load_weights(model, path)
    np.testing.assert_array_equal(model.layers[10].weight.data, state["10.weight"].T)


def test_ambiguous_order_asks_for_name_map(tmp_path):
    """Two modules of one shape, named so that their natural order may not be the model's:
    refused, then loaded with name_map."""
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal(s).astype(np.float32) for s in ((4, 4), (4, 4), (2, 4)))
    path = write_safetensors(tmp_path / "m.safetensors", {
        "zeta.weight": a, "alpha.weight": b, "zeta.bias": a[0], "alpha.bias": b[0],
        "head.weight": c})
    model = minicnn.Sequential([Dense(4, 4), Dense(4, 4), Dense(4, 2, bias=False)])
    with pytest.raises(SafetensorsError, match="2 modules of the file fit layer dense_1") as err:
        load_weights(model, path)
    assert "name_map" in str(err.value) and "\n" not in str(err.value)
    load_weights(model, path, name_map={
        "dense_1.weight": "zeta.weight", "dense_1.bias": "zeta.bias",
        "dense_2.weight": "alpha.weight", "dense_2.bias": "alpha.bias",
        "dense_3.weight": "head.weight"})
    np.testing.assert_array_equal(model.layers[0].weight.data, a.T)
    np.testing.assert_array_equal(model.layers[1].weight.data, b.T)
    np.testing.assert_array_equal(model.layers[2].weight.data, c.T)


@pytest.mark.parametrize("change,message", [
    (lambda s: s.pop("5.bias"), "no tensor '5.bias' for dense_1.bias"),
    (lambda s: s.update({"5.weight": s["5.weight"][:, :32]}), "'5.weight' has shape (3, 32)"),
    (lambda s: s.update({"9.weight": s["5.bias"]}), "'9.weight' matches nothing"),
])
def test_mismatches_name_the_tensor(change, message, tmp_path):
    rng = np.random.default_rng(0)
    model = small_cnn()
    shapes = {"0.weight": (4, 1, 3, 3), "0.bias": (4,), "1.weight": (4,), "1.bias": (4,),
              "1.running_mean": (4,), "1.running_var": (4,), "5.weight": (3, 64), "5.bias": (3,)}
    state = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    change(state)
    path = write_safetensors(tmp_path / "m.safetensors", state)
    with pytest.raises(SafetensorsError) as err:
        load_weights(model, path)
    text = str(err.value)
    assert message in text and str(path) in text and "\n" not in text, text


def test_header_refusals(tmp_path):
    path = tmp_path / "bad.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                         "v": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(12))
    with pytest.raises(SafetensorsError, match="overlapping"):
        read_safetensors(path)
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(SafetensorsError, match="over the budget"):
        read_safetensors(path)
    header = json.dumps({"w": {"dtype": "BF16", "shape": [1], "data_offsets": [0, 2]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(2))
    with pytest.raises(SafetensorsError, match="dtype 'BF16'"):
        read_safetensors(path)
