"""Architecture builders: output shapes and parameter counts worked out by hand."""

import numpy as np
import pytest

import keras

from keras_mcv import architectures


def conv(k, cin, cout, bias=True):
    """Parameters of a k x k convolution."""
    return k * k * cin * cout + (cout if bias else 0)


def dense(nin, nout):
    return nin * nout + nout


def bn(channels):
    """gamma, beta (trainable) + moving mean, moving variance (non-trainable)."""
    return 4 * channels


def trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def check_output(model, input_shape, num_classes, batch=2):
    x = np.random.default_rng(0).normal(size=(batch, *input_shape)).astype("float32")
    y = model.predict(x, verbose=0)
    assert y.shape == (batch, num_classes)
    # Softmax head: rows are probability distributions.
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)


def test_digits_cnn_params_and_shape():
    model = architectures.digits_cnn((8, 8, 1), 10)
    # conv 1->16, conv 16->32, pool to 4x4x32 = 512 features, dense 64, dense 10.
    expected = conv(3, 1, 16) + conv(3, 16, 32) + dense(4 * 4 * 32, 64) + dense(64, 10)
    assert expected == 38_282
    assert model.count_params() == expected
    check_output(model, (8, 8, 1), 10)


def test_cifar_small_cnn_params_and_shape():
    model = architectures.cifar_small_cnn((32, 32, 3), 10)
    convs = (
        conv(3, 3, 48) + conv(3, 48, 48) + conv(3, 48, 96)
        + conv(3, 96, 96) + conv(3, 96, 192) + conv(3, 192, 192)
    )
    # Three pools: 32 -> 4, so the flatten has 4*4*192 features.
    head = dense(4 * 4 * 192, 512) + dense(512, 256) + dense(256, 10)
    assert convs + head == 2_352_058
    assert model.count_params() == convs + head
    assert trainable_count(model) == convs + head
    check_output(model, (32, 32, 3), 10)


def test_cifar_small_cnn_has_no_regularisation():
    model = architectures.cifar_small_cnn((32, 32, 3), 10)
    kinds = {type(layer).__name__ for layer in model.layers}
    assert not kinds & {"BatchNormalization", "Dropout"}
    widths = [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert widths == [512, 256, 10]


def test_svhn_small_cnn_params_and_shape():
    model = architectures.svhn_small_cnn((32, 32, 3), 10)
    convs = conv(3, 3, 32) + conv(3, 32, 32) + conv(3, 32, 64) + conv(3, 64, 64)
    head = dense(8 * 8 * 64, 512) + dense(512, 10)  # two pools: 32 -> 8
    assert convs + head == 2_168_362
    assert model.count_params() == convs + head
    check_output(model, (32, 32, 3), 10)


def test_vgg11_params_layers_and_shape():
    model = architectures.vgg11((32, 32, 3), 10)
    widths = [c for c in architectures.VGG11_CONFIG if c != "M"]
    cins = [3] + widths[:-1]
    convs = sum(conv(3, cin, cout) for cin, cout in zip(cins, widths))
    head = dense(512, 512) + dense(512, 512) + dense(512, 10)  # five pools: 32 -> 1
    assert model.count_params() == convs + head == 9_750_922
    dropouts = [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert dropouts == [0.5, 0.5]
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    check_output(model, (32, 32, 3), 10)


def resnet18_counts(num_classes):
    """(total, trainable) parameters of the CIFAR ResNet-18, convs without bias."""

    def block(cin, cout, stride):
        n = conv(3, cin, cout, bias=False) + bn(cout) + conv(3, cout, cout, bias=False) + bn(cout)
        if stride != 1 or cin != cout:
            n += conv(1, cin, cout, bias=False) + bn(cout)
        return n

    total = conv(3, 3, 64, bias=False) + bn(64)
    bn_channels = 64
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        total += block(cin, cout, stride) + block(cout, cout, 1)
        bn_channels += 4 * cout + (cout if stride != 1 or cin != cout else 0)
        cin = cout
    total += dense(512, num_classes)
    return total, total - 2 * bn_channels  # moving mean/var are not trainable


def test_resnet18_params_and_shape():
    model = architectures.resnet18((32, 32, 3), 10)
    total, trainable = resnet18_counts(10)
    # The trainable count is the familiar 11,173,962 of the PyTorch CIFAR
    # ResNet-18 (PyTorch keeps BN running statistics as buffers, not params).
    assert (total, trainable) == (11_183_562, 11_173_962)
    assert model.count_params() == total
    assert trainable_count(model) == trainable
    # 8 BasicBlocks of 2 convs, the stem, and 3 projection shortcuts.
    n_conv = sum(isinstance(layer, keras.layers.Conv2D) for layer in model.layers)
    assert n_conv == 1 + 16 + 3
    check_output(model, (32, 32, 3), 10)


def test_resnet50_small_input():
    model = architectures.resnet50((32, 32, 3), 8)
    check_output(model, (32, 32, 3), 8)
    assert model.layers[-1].units == 8


def test_builders_registry_and_get():
    assert set(architectures.BUILDERS) == {
        "digits_cnn", "cifar_small_cnn", "svhn_small_cnn", "vgg11", "resnet18", "resnet50",
    }
    assert architectures.get("resnet18") is architectures.resnet18
    with pytest.raises(ValueError, match="known architectures: cifar_small_cnn, digits_cnn"):
        architectures.get("resnet19")


@pytest.mark.parametrize("name", ["digits_cnn", "cifar_small_cnn", "svhn_small_cnn", "vgg11"])
def test_builders_return_uncompiled_functional_models(name):
    shape = (8, 8, 1) if name == "digits_cnn" else (32, 32, 3)
    model = architectures.get(name)(shape, 5)
    assert isinstance(model, keras.Model)
    assert not model.compiled
    assert type(model).__name__ == "Functional"
    assert model.output_shape == (None, 5)
    assert model.input_shape == (None, *shape)


# ------------------------------------------------------------------ l2 and dropout knobs

SMALL = {
    "digits_cnn": ((8, 8, 1), 1), "cifar_small_cnn": ((32, 32, 3), 2),
    "svhn_small_cnn": ((32, 32, 3), 1), "vgg11": ((32, 32, 3), 2), "resnet18": ((32, 32, 3), 1),
}
"""Builder -> (input shape, dropout layers the knob adds)."""


def kernels(model):
    return [w for w in model.trainable_weights if w.path.endswith("kernel")]


@pytest.mark.parametrize("name", sorted(SMALL))
def test_knobs_default_to_the_thesis_network(name):
    shape, _ = SMALL[name]
    model = architectures.get(name)(shape, 10)
    dropouts = [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert dropouts == ([0.5, 0.5] if name == "vgg11" else [])
    assert not model.losses  # no regularizer anywhere


@pytest.mark.parametrize("name", sorted(SMALL))
def test_l2_knob_penalises_every_kernel(name):
    shape, _ = SMALL[name]
    keras.utils.set_random_seed(0)
    model = architectures.get(name)(shape, 10, l2=1e-3)
    model(np.zeros((1, *shape), "float32"))
    expected = 1e-3 * sum(float(np.sum(np.square(k.numpy()))) for k in kernels(model))
    assert float(sum(model.losses)) == pytest.approx(expected, rel=1e-4)
    assert len(model.losses) == len(kernels(model))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_dropout_knob(name):
    shape, count = SMALL[name]
    model = architectures.get(name)(shape, 10, dropout=0.3)
    rates = [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert rates == [0.3] * count
    assert model.count_params() == architectures.get(name)(shape, 10).count_params()
    if name == "vgg11":
        no_dropout = architectures.vgg11(shape, 10, dropout=0.0)
        assert not any(isinstance(layer, keras.layers.Dropout) for layer in no_dropout.layers)


@pytest.mark.parametrize("kwargs, message", [
    ({"l2": -1e-3}, "`l2` must be None or a number >= 0"),
    ({"dropout": 1.0}, r"`dropout` must be None or a number in \[0, 1\)"),
    ({"dropout": "0.5"}, "`dropout`"),
])
def test_bad_knobs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        architectures.cifar_small_cnn((32, 32, 3), 10, **kwargs)


def test_resnet50_has_no_knobs():
    with pytest.raises(ValueError, match="resnet50 .* has no l2 or dropout knob"):
        architectures.resnet50((32, 32, 3), 8, l2=1e-4)
