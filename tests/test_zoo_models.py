"""The zoo's ResNet, MobileNet and VGG: shapes for 28x28 and 32x32 inputs, gradients flowing
to every parameter, checkpoint round trips, recipes, and a model of one's own by
module:function on the command line."""
from __future__ import annotations

import os
import textwrap

import numpy as np
import pytest

import minicnn
from minicnn import zoo
from minicnn.cli import commands as cli
from minicnn.layers import BatchNorm2D, Conv2D

NEW = ["resnet", "mobilenet", "vgg"]


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("c,size,classes", [(1, 28, 10), (3, 32, 7)])
def test_shapes_and_gradients_reach_every_parameter(name, c, size, classes):
    minicnn.manual_seed(0)
    model = zoo.build_model(name, in_channels=c, input_size=size, classes=classes)
    assert model.output_shape((c, size, size)) == (classes,)
    x = np.random.default_rng(0).standard_normal((4, c, size, size)).astype(np.float32)
    y = model.forward(x, training=True)
    assert y.shape == (4, classes) and y.dtype == np.float32
    model.zero_grad()
    model.backward(np.ones_like(y))
    for pname, p in model.named_parameters():
        assert np.abs(p.grad).sum() > 0, pname
    text = model.summary(print_fn=lambda s: None)
    assert "Total params" in text or "params" in text.lower()


def test_resnet_structure_and_arguments():
    model = zoo.resnet(widths=(8, 16), blocks=3)
    convs = [layer for _, layer in model.named_layers() if isinstance(layer, Conv2D)]
    # stem + 2 stages x 3 blocks x 2 convs + one 1x1 projection where the shape changes
    assert len(convs) == 1 + 2 * 3 * 2 + 1
    assert sum(c.kernel_size == (1, 1) and c.stride == (2, 2) for c in convs) == 1
    assert all(c.bias is None for c in convs)
    with pytest.raises(ValueError, match="resnet: expected widths >= 1 and blocks >= 1"):
        zoo.resnet(blocks=0)


def test_mobilenet_uses_depthwise_convolutions():
    model = zoo.mobilenet()
    depthwise = [layer for _, layer in model.named_layers()
                 if isinstance(layer, Conv2D) and layer.groups == layer.in_channels > 1]
    assert len(depthwise) == len(zoo.mobilenet.__defaults__[0])


def test_vgg_refuses_too_many_stages():
    assert any(isinstance(lyr, BatchNorm2D) for _, lyr in zoo.vgg().named_layers())
    with pytest.raises(ValueError, match="vgg: 6 stages halve 28x28 to nothing"):
        zoo.vgg(widths=(8,) * 6)


@pytest.mark.parametrize("name", NEW)
def test_checkpoint_round_trip(name, tmp_path):
    minicnn.manual_seed(1)
    model = zoo.build_model(name)
    x = np.random.default_rng(1).standard_normal((3, 1, 28, 28)).astype(np.float32)
    model.forward(x, training=True)                    # running statistics move
    minicnn.save(model, tmp_path / "m.npz")
    again = minicnn.load(tmp_path / "m.npz")
    with minicnn.no_grad():
        np.testing.assert_array_equal(model.forward(x, training=False),
                                      again.forward(x, training=False))


def test_recipes_and_unknown_models():
    assert zoo.recipe_for("resnet").epochs == 10 and zoo.recipe_for("resnet").augment == "auto"
    assert zoo.recipe_for("mine:net") is zoo.REFERENCE_RECIPE
    with pytest.raises(ValueError, match="unknown model 'alexnet'"):
        zoo.build_model("alexnet")
    with pytest.raises(ValueError, match="model 'ref-cnn' is for 1x28x28 images and 10 "
                                         "classes; got in_channels=3"):
        zoo.build_model("ref-cnn", in_channels=3)
    with pytest.raises(ValueError, match="cannot import no_such_module_xyz"):
        zoo.build_model("no_such_module_xyz:net")


@pytest.mark.skipif(not os.environ.get("MINICNN_DATA"), reason="MINICNN_DATA is not set")
def test_train_a_model_of_ones_own_by_module_function(tmp_path, monkeypatch, capsys):
    (tmp_path / "mymodels.py").write_text(textwrap.dedent("""
        import minicnn
        from minicnn.layers import Dense, Flatten

        def tiny(in_channels, input_size, classes):
            return minicnn.Sequential([Flatten(), Dense(in_channels * input_size ** 2, classes)],
                                      input_shape=(in_channels, input_size, input_size))

        def not_a_model():
            return 42
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["train", "--limit", "300", "--test-limit", "100", "--epochs", "1", "--quiet",
            "--batch-size", "50"]
    assert cli.main([*args, "--model", "mymodels:tiny", "--out", "run"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert cli.main([*args, "--model", "mymodels:not_a_model", "--out", "bad"]) == 1
    assert "the function returned a int, not a minicnn model" in capsys.readouterr().err
    assert cli.main([*args, "--model", "alexnet", "--out", "bad"]) == 2
    assert "expected one of ref-cnn" in capsys.readouterr().err


@pytest.mark.parametrize("decoder", ["upsample", "transpose"])
def test_autoencoder_maps_images_to_images(decoder):
    if decoder == "transpose":
        pytest.importorskip("minicnn.layers.conv_transpose")
    from minicnn.zoo.autoencoder import add_noise, denoise, psnr
    minicnn.manual_seed(0)
    model = zoo.build_model("autoencoder", decoder=decoder, in_channels=1, input_size=28)
    x = np.random.default_rng(0).random((3, 1, 28, 28)).astype(np.float32)
    y = model.forward(x, training=True)
    assert y.shape == x.shape and model.output_shape((1, 28, 28)) == (1, 28, 28)
    model.backward(np.ones_like(y))
    assert all(np.abs(p.grad).sum() > 0 for p in model.parameters())
    out = denoise(model, add_noise(x, 0.3, np.random.default_rng(1)))
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    assert psnr(x, x) == float("inf") and psnr(np.zeros(4), np.full(4, 0.1)) == pytest.approx(20)
    with pytest.raises(ValueError, match="input_size must be a multiple of 4"):
        zoo.autoencoder(input_size=30)


@pytest.mark.skipif(not os.environ.get("MINICNN_DATA"), reason="MINICNN_DATA is not set")
def test_train_refuses_a_model_that_is_not_a_classifier(tmp_path, capsys):
    assert cli.main(["train", "--model", "autoencoder", "--limit", "200", "--out",
                     str(tmp_path / "ae")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "this model's output per image is (1, 28, 28)" in err
