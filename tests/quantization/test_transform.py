"""The rewrite itself: exact BN folding, names, nesting, unsupported layers, save/load."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import keras

from tfkd.quantization import (UnsupportedLayerError, calibrate, is_quantized, quantize_model,
                               quantized_layers, set_quantization_enabled)

L = keras.layers


def _bn_stats(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in _all_layers(model):
        if isinstance(layer, L.BatchNormalization):
            c = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(size=c))
            layer.moving_variance.assign(rng.uniform(0.2, 3.0, size=c))
            layer.gamma.assign(rng.uniform(0.5, 2.0, size=c))
            layer.beta.assign(rng.normal(size=c))
    return model


def _all_layers(model):
    out = []
    for layer in model.layers:
        out.append(layer)
        if isinstance(layer, keras.Model):
            out.extend(_all_layers(layer))
    return out


def _student():
    inputs = keras.Input((16, 16, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(6.0, name="stem_relu")(x)
    y = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(x)
    y = L.BatchNormalization(name="dw_bn")(y)
    y = L.ReLU(name="dw_relu")(y)
    y = L.Conv2D(8, 1, use_bias=False, name="project")(y)
    y = L.BatchNormalization(name="project_bn")(y)
    x = L.Add(name="residual")([x, y])
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(12, use_bias=False, name="fc")(x)
    x = L.BatchNormalization(name="fc_bn")(x)
    x = L.ReLU(name="fc_relu")(x)
    outputs = L.Dense(10, name="logits")(x)
    return _bn_stats(keras.Model(inputs, outputs, name="student"))


def test_bn_folding_is_exact_in_float_and_names_survive():
    model = _student()
    x = np.random.default_rng(0).normal(size=(32, 16, 16, 3)).astype("float32")
    qat = quantize_model(model)
    assert is_quantized(qat) and not is_quantized(model)
    assert [l.name for l in model.layers] == [l.name for l in qat.layers if l.name != "image_quant"]
    set_quantization_enabled(qat, False)
    ref = model.predict(x, verbose=0)
    err = np.abs(qat.predict(x, verbose=0) - ref).max()
    assert err < 1e-4 * max(1.0, np.abs(ref).max()), err
    # Calibrated and quantized, the model tracks the float one to a few percent.
    set_quantization_enabled(qat, True)
    calibrate(qat, x, steps=1)
    logits = qat.get_layer("logits")
    assert float(logits.range_max) == pytest.approx(float(ref.max()), rel=1e-5)
    assert float(logits.range_min) == pytest.approx(float(ref.min()), rel=1e-5)
    calibrated = np.abs(qat.predict(x, verbose=0) - ref).mean()
    assert 0 < calibrated < 0.05 * np.abs(ref).mean(), calibrated


def test_bn_after_activation_becomes_affine_and_stays_exact():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = L.BatchNormalization(name="late_bn")(x)  # tfmot rejects this; we run it as an affine
    model = _bn_stats(keras.Model(inputs, x))
    qat = quantize_model(model)
    assert type(qat.get_layer("late_bn")).__name__ == "QuantizedChannelAffine"
    set_quantization_enabled(qat, False)
    x = np.random.default_rng(1).normal(size=(8, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(qat.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-4, rtol=1e-4)


def test_nested_functional_backbone_and_sequential():
    backbone_in = keras.Input((16, 16, 3))
    b = L.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="b_conv")(backbone_in)
    b = L.BatchNormalization(name="b_bn")(b)
    b = L.ReLU(name="b_relu")(b)
    backbone = keras.Model(backbone_in, b, name="backbone")
    head = keras.Sequential([keras.Input((8, 8, 8)), L.GlobalAveragePooling2D(name="h_gap"),
                             L.Dense(4, name="h_fc")], name="head")
    inputs = keras.Input((16, 16, 3))
    model = _bn_stats(keras.Model(inputs, head(backbone(inputs)), name="outer"))
    qat = quantize_model(model)
    assert {"backbone", "head"} <= {l.name for l in qat.layers}
    inner = qat.get_layer("backbone")
    assert type(inner.get_layer("b_conv")).__name__ == "QuantizedConv2D"
    assert type(inner.get_layer("b_bn")).__name__ == "QuantizedActivation"
    assert len(quantized_layers(qat)) >= 5
    set_quantization_enabled(qat, False)
    x = np.random.default_rng(2).normal(size=(4, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(qat.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-4, rtol=1e-4)
    # A bare Sequential model is rewritten too.
    seq = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3, name="c"),
                            L.ReLU(name="r"), L.Flatten(name="f"), L.Dense(2, name="d")])
    qseq = quantize_model(seq)
    assert {"c", "r", "f", "d"} <= {l.name for l in qseq.layers}


@keras.saving.register_keras_serializable(package="tfkd_tests")
class Mystery(L.Layer):
    def call(self, x):
        return x * 2.0


def test_unsupported_layers_are_all_listed_with_fixes():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, name="conv")(inputs)
    x = L.LeakyReLU(name="leaky")(x)
    x = Mystery(name="mystery")(x)
    x = L.Reshape((36, 4), name="seq")(x)
    x = L.LSTM(4, name="lstm")(x)
    model = keras.Model(inputs, x)
    with pytest.raises(UnsupportedLayerError) as info:
        quantize_model(model)
    message = str(info.value)
    for name, cls in [("leaky", "LeakyReLU"), ("mystery", "Mystery"), ("lstm", "LSTM")]:
        assert f"'{name}' ({cls})" in message, message
    assert "ReLU" in message and "recurrent" in message
    assert [p[0] for p in info.value.problems] == ["leaky", "mystery", "lstm"]


def test_bad_arguments_say_what_to_do():
    with pytest.raises(NotImplementedError, match="fold_bn=True"):
        quantize_model(_student(), fold_bn="train")
    with pytest.raises(TypeError, match="functional"):
        class Sub(keras.Model):
            def call(self, x):
                return x
        quantize_model(Sub())
    with pytest.raises(ValueError, match="empty"):
        quantize_model(_student(), calibration_data=np.zeros((0, 16, 16, 3), "float32"))


def test_save_load_round_trip_keeps_ranges(tmp_path):
    x = np.random.default_rng(3).normal(size=(64, 16, 16, 3)).astype("float32")
    qat = quantize_model(_student(), calibration_data=x, calibration_steps=2)
    qat.compile("adam", "mse")
    qat.fit(x, np.zeros((64, 10), "float32"), epochs=1, batch_size=16, verbose=0)
    path = os.path.join(str(tmp_path), "qat.keras")
    qat.save(path)
    loaded = keras.saving.load_model(path)
    assert [type(l).__name__ for l in loaded.layers] == [type(l).__name__ for l in qat.layers]
    for a, b in zip(quantized_layers(qat), quantized_layers(loaded)):
        for va, vb in zip(a.weights, b.weights):
            np.testing.assert_array_equal(np.asarray(va), np.asarray(vb), err_msg=va.path)
    np.testing.assert_array_equal(qat.predict(x, verbose=0), loaded.predict(x, verbose=0))
