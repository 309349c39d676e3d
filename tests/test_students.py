"""tfkd.students: the Edge TPU-friendly zoo."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from tfkd import students

ALLOWED_LAYERS = {"InputLayer", "Rescaling", "Conv2D", "DepthwiseConv2D", "BatchNormalization",
                  "ReLU", "Add", "Identity", "GlobalAveragePooling2D", "Dense"}


@pytest.mark.parametrize("name", students.names("classification"))
def test_students_are_small_and_edge_tpu_friendly(name):
    model = students.build(name, input_shape=(32, 32, 3), num_classes=10)
    assert 20_000 < model.count_params() <= 100_000
    kinds = {type(layer).__name__ for layer in model.layers}
    assert kinds <= ALLOWED_LAYERS, kinds - ALLOWED_LAYERS
    relus = [l for l in model.layers if type(l).__name__ == "ReLU"]
    assert all(l.negative_slope == 0 for l in relus)  # no leaky ReLU
    shapes = {n: tuple(model.get_layer(n).output.shape[1:]) for n in ("stage1", "stage2", "stage3")}
    assert shapes["stage1"][:2] == (32, 32) and shapes["stage2"][:2] == (16, 16)
    assert shapes["stage3"][:2] == (8, 8)
    assert model.output.shape[-1] == 10


def test_width_multiplier_and_other_shapes():
    small = students.build("mobilenet_tiny", width=0.5).count_params()
    base = students.build("mobilenet_tiny", width=1.0).count_params()
    assert small < 0.5 * base
    gray = students.build("resnet_tiny", input_shape=(28, 28, 1), num_classes=2)
    out = gray.predict(np.zeros((2, 28, 28, 1), "float32"), verbose=0)
    assert out.shape == (2, 2)
    big = students.build("mobile_cnn", input_shape=(96, 96, 3), num_classes=80)
    assert big.get_layer("stage1").output.shape[1] == 48  # the stem strides large inputs


@pytest.mark.parametrize("name", students.names("classification"))
def test_bn_momentum_reaches_every_batch_norm_layer(name):
    model = students.build(name, bn_momentum=0.912)
    momenta = {l.momentum for l in model.layers if type(l).__name__ == "BatchNormalization"}
    assert momenta == {0.912}
    default = students.build(name)
    assert {l.momentum for l in default.layers
            if type(l).__name__ == "BatchNormalization"} == {0.99}  # Keras' default


def test_bn_momentum_out_of_range_says_what_it_is():
    with pytest.raises(ValueError, match=r"bn_momentum must be in \[0, 1\), got 1.5.*"
                                         "momentum_for_steps"):
        students.build("mobile_cnn", bn_momentum=1.5)


def test_unknown_student_lists_the_zoo():
    with pytest.raises(ValueError, match="Unknown student 'resnet50'.*mobile_cnn, mobilenet_tiny, resnet_tiny"):
        students.build("resnet50")


def test_int8_export_uses_only_edge_tpu_ops(tmp_path):
    import tfkd.tflite as tfl

    model = students.build("mobilenet_tiny", input_shape=(32, 32, 3), width=0.5)
    x = np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    report = tfl.convert(model, str(tmp_path / "s.tflite"), quantization="int8",
                         representative_data=x, input_type="uint8", output_type="int8")
    assert report.is_fully_int8
    edge_ops = {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MEAN", "FULLY_CONNECTED", "QUANTIZE",
                "MUL", "AVERAGE_POOL_2D", "RESHAPE"}
    assert set(report.op_counts) <= edge_ops, set(report.op_counts) - edge_ops
    assert tfl.check_edgetpu(str(tmp_path / "s.tflite")).compatible


def test_with_activation_appends_probabilities_and_keeps_qat_int8(tmp_path):
    import doctest

    import numpy as np

    import tfkd.tflite as tfl
    from tfkd.quantization import quantize_model
    from tfkd.students import deploy

    assert doctest.testmod(deploy).failed == 0
    keras.utils.set_random_seed(0)
    net = students.build("mobile_cnn", input_shape=(16, 16, 3), num_classes=4, width=0.25)
    x = np.random.default_rng(0).integers(0, 256, (16, 16, 16, 3)).astype("float32")
    probs = students.with_activation(net, "softmax").predict(x, verbose=0)
    np.testing.assert_allclose(probs, keras.ops.softmax(net.predict(x, verbose=0)), atol=1e-6)
    qat = quantize_model(net, calibration_data=x)
    report = tfl.convert(students.with_activation(qat, "sigmoid"), tmp_path / "q.tflite",
                         quantization="qat", target="coral")
    assert report.is_fully_int8 and "LOGISTIC" in report.op_counts
    with pytest.raises(ValueError, match="one of"):
        students.with_activation(net, "relu")
