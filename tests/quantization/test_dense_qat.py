"""Issue 9: encoder-decoder (U-Net) students with skips convert to a fully int8 .tflite.

A Concatenate whose inputs are a bilinear upsampling and a skip tensor that also feeds the
next encoder stage used to fail in TF 2.21's converter ("'tfl.concatenation' op quantization
parameters violate the same scale constraint"): the transform now quantizes every tensor of
such a same-scale group with one shared range.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import keras

from tfkd.quantization import quantize_model, UnsupportedLayerError

L = keras.layers
NUM_CLASSES = 12


def _cbr(x, filters, name, strides=2):
    x = L.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=name)(x)
    x = L.BatchNormalization(name=f"{name}_bn")(x)
    return L.ReLU(name=f"{name}_relu")(x)


def tiny_unet(up="resizing"):
    """Three stride-2 Conv-BN-ReLU, bilinear upsampling, Concatenate with the skips."""
    def upsample(x, size, name):
        if up == "resizing":
            return L.Resizing(size, size, interpolation="bilinear", name=name)(x)
        return L.UpSampling2D(2, interpolation="bilinear", name=name)(x)

    inputs = keras.Input((32, 32, 3), name="image")
    e1 = _cbr(inputs, 8, "e1")    # 16x16, feeds e2 and cat1
    e2 = _cbr(e1, 16, "e2")       # 8x8, feeds e3 and cat2
    e3 = _cbr(e2, 16, "e3")       # 4x4
    d2 = _cbr(L.Concatenate(name="cat2")([upsample(e3, 8, "up2"), e2]), 16, "d2", strides=1)
    d1 = _cbr(L.Concatenate(name="cat1")([upsample(d2, 16, "up1"), e1]), 8, "d1", strides=1)
    outputs = L.Conv2D(NUM_CLASSES, 1, name="logits")(upsample(d1, 32, "up0"))
    return keras.Model(inputs, outputs, name=f"unet_{up}")


def _data(n, seed):
    """Piecewise-constant 4x4 colour blocks; class = dominant channel x brightness bucket."""
    rng = np.random.default_rng(seed)
    blocks = rng.uniform(0, 1, (n, 8, 8, 3)).astype("float32")
    x = np.repeat(np.repeat(blocks, 4, axis=1), 4, axis=2)
    bright = np.minimum((x.mean(-1) * 4).astype("int32"), 3)
    y = np.argmax(x, -1).astype("int32") * 4 + bright
    return x, y


@pytest.fixture(scope="module")
def data():
    return _data(256, 0)


@pytest.mark.parametrize("up", ["resizing", "upsampling2d"])
def test_qat_unet_converts_fully_int8_with_pixel_parity(up, data, tmp_path):
    from tfkd.tflite import convert, parity

    keras.utils.set_random_seed(0)
    x, y = data
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = tiny_unet(up)
    model.compile(keras.optimizers.Adam(1e-2), loss)
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)

    qat = quantize_model(model, calibration_data=x[:128], calibration_steps=2)
    # Same-scale groups: each Concatenate with its upsampling and its skip share one range.
    for group in (("cat2", "e2_relu", "up2"), ("cat1", "e1_relu", "up1")):
        layers = [qat.get_layer(n) for n in group]
        assert all(l.shared_range for l in layers), group
    qat.compile(keras.optimizers.Adam(1e-3), loss)
    qat.fit(x, y, epochs=1, batch_size=32, verbose=0)
    for a, b in (("cat2", "e2_relu"), ("cat2", "up2"), ("cat1", "e1_relu"), ("cat1", "up1")):
        np.testing.assert_array_equal(np.asarray(qat.get_layer(a).shared_min),
                                      np.asarray(qat.get_layer(b).shared_min))
        np.testing.assert_array_equal(np.asarray(qat.get_layer(a).shared_max),
                                      np.asarray(qat.get_layer(b).shared_max))

    path = os.path.join(str(tmp_path), f"{qat.name}.tflite")
    # convert verifies the file is fully int8 and raises otherwise.
    report = convert(qat, path, quantization="qat", input_type="int8", output_type="int8")
    assert report.is_fully_int8, report
    ops = {op.name for op in report.ops}
    assert {"CONCATENATION", "RESIZE_BILINEAR", "CONV_2D"} <= ops, ops
    assert not ops & {"QUANTIZE", "DEQUANTIZE"}, ops

    x_test, _ = _data(32, 1)
    result = parity(qat, path, x_test)
    print(f"{up}: ops={sorted(ops)} per-pixel argmax agreement={result['top1_agreement']:.4f} "
          f"mean={result['mean_lsb']:.3f} LSB max={result['max_lsb']:.1f} LSB")
    assert result["top1_agreement"] >= 0.97, result


def test_nearest_upsampling_is_still_refused_with_a_fix():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, padding="same", name="conv")(inputs)
    outputs = L.UpSampling2D(2, name="up")(x)
    with pytest.raises(UnsupportedLayerError, match="RESHAPE \\+ TILE"):
        quantize_model(keras.Model(inputs, outputs))


def test_shared_ranges_survive_save_and_load(data, tmp_path):
    x, _ = data
    qat = quantize_model(tiny_unet("upsampling2d"), calibration_data=x[:64], calibration_steps=1)
    path = os.path.join(str(tmp_path), "unet.keras")
    qat.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_layer("cat1").range_peers == qat.get_layer("cat1").range_peers
    np.testing.assert_array_equal(qat.predict(x[:8], verbose=0), loaded.predict(x[:8], verbose=0))


def tiny_gated_head():
    """LR-ASPP's gate: GAP(keepdims) -> 1x1 conv -> sigmoid times the features (MUL, with a
    ReLU after it to fuse), then a bilinear resize by a non-integer factor (8x8 -> 12x20)."""
    inputs = keras.Input((32, 32, 3), name="image")
    e1 = _cbr(inputs, 8, "e1")                          # 16x16
    e2 = _cbr(e1, 16, "e2")                             # 8x8, feeds the branch and the gate
    gate = L.GlobalAveragePooling2D(keepdims=True, name="pool")(e2)
    gate = L.Conv2D(16, 1, name="gate_conv")(gate)
    gate = L.Activation("sigmoid", name="gate")(gate)
    x = L.ReLU(name="mul_relu")(L.Multiply(name="mul")([e2, gate]))
    x = L.Resizing(12, 20, interpolation="bilinear", name="up")(x)
    x = L.Conv2D(NUM_CLASSES, 1, name="classifier")(x)
    outputs = L.Resizing(32, 32, interpolation="bilinear", name="logits")(x)
    return keras.Model(inputs, outputs, name="gated_head")


def test_sigmoid_gate_multiply_converts_fully_int8_with_pixel_parity(data, tmp_path):
    from tfkd.quantization import layers as qlayers
    from tfkd.tflite import convert, parity

    keras.utils.set_random_seed(0)
    x, y = data
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = tiny_gated_head()
    model.compile(keras.optimizers.Adam(1e-2), loss)
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)

    qat = quantize_model(model, calibration_data=x[:128], calibration_steps=2)
    mul = qat.get_layer("mul")
    assert isinstance(mul, qlayers.QuantizedMultiply)
    assert not mul.quantize_output  # the ReLU after it fuses: one fake-quant, after the ReLU
    assert qat.get_layer("gate")._fixed_range == (0.0, 255.0 / 256.0)  # int8 LOGISTIC's
    qat.compile(keras.optimizers.Adam(1e-3), loss)
    qat.fit(x, y, epochs=1, batch_size=32, verbose=0)

    path = os.path.join(str(tmp_path), "gated.tflite")
    report = convert(qat, path, quantization="qat", input_type="int8", output_type="int8")
    assert report.is_fully_int8, report
    counts = report.op_counts
    assert {op: counts.get(op) for op in ("MEAN", "LOGISTIC", "MUL", "RESIZE_BILINEAR")} == {
        "MEAN": 1, "LOGISTIC": 1, "MUL": 1, "RESIZE_BILINEAR": 2}, counts
    assert not set(counts) & {"RELU", "QUANTIZE", "DEQUANTIZE"}, counts  # ReLU fused into MUL

    x_test, _ = _data(32, 1)
    result = parity(qat, path, x_test)
    print(f"gated head: ops={dict(counts)} per-pixel argmax agreement="
          f"{result['top1_agreement']:.4f} mean={result['mean_lsb']:.3f} LSB "
          f"max={result['max_lsb']:.1f} LSB")
    assert result["top1_agreement"] >= 0.97, result
    assert result["mean_lsb"] < 0.5, result

    saved = os.path.join(str(tmp_path), "gated.keras")
    qat.save(saved)
    loaded = keras.saving.load_model(saved)
    assert isinstance(loaded.get_layer("mul"), qlayers.QuantizedMultiply)
    np.testing.assert_array_equal(qat.predict(x[:8], verbose=0),
                                  loaded.predict(x[:8], verbose=0))


def test_biases_sit_on_the_int32_grid_tflite_stores_them_on(data, tmp_path):
    """Each conv's bias in the QAT model is the one the .tflite file holds (int32 at input
    scale x weight scale), not a float the converter rounds: left in float it shifts about
    one output in a few hundred by one LSB at every conv, and deep students sum those flips."""
    from ai_edge_litert.interpreter import Interpreter
    from tfkd.quantization import layers as qlayers
    from tfkd.tflite import convert

    x, _ = data
    model = tiny_unet("resizing")
    rng = np.random.default_rng(3)
    for layer in model.layers:  # non-trivial folded biases
        if isinstance(layer, L.BatchNormalization):
            c = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(size=c))
            layer.beta.assign(rng.normal(size=c))
    model.get_layer("logits").bias.assign(rng.normal(size=NUM_CLASSES))
    qat = quantize_model(model, calibration_data=x[:64], calibration_steps=1)
    assert qat.get_layer("e1").input_quantizer == "image_quant"
    assert qat.get_layer("d2").input_quantizer == "cat2"
    assert qat.get_layer("logits").input_quantizer == "up0"
    path = os.path.join(str(tmp_path), "unet.tflite")
    convert(qat, path, quantization="qat", input_type="int8", output_type="int8")

    interpreter = Interpreter(model_path=path)
    stored = []  # (int32 values, per-channel scales) of every bias in the file
    for d in interpreter.get_tensor_details():
        scales = d["quantization_parameters"]["scales"]
        if d["dtype"] == np.int32 and len(d["shape"]) == 1 and scales.size == d["shape"][0]:
            stored.append((interpreter.get_tensor(d["index"]).astype("float64"), scales))
    biased = [l for l in qat.layers if isinstance(l, qlayers.QuantizedConv2D)]
    assert len(biased) == 6 and len(stored) == 6
    exact_grid, exact_float, total = 0, 0, 0
    for layer in biased:
        bound = layer._kernel_bound(layer.kernel)
        on_grid = keras.ops.convert_to_numpy(layer._quantize_bias(layer.bias, bound, False))
        float_bias = keras.ops.convert_to_numpy(layer.bias)
        # The file's bias for this layer: the one closest to it, in int32 steps.
        q, scales = min((s for s in stored if s[0].shape == on_grid.shape),
                        key=lambda s: np.abs(on_grid / s[1] - s[0]).max())
        steps = np.abs(on_grid / scales - q)
        tol = 1e-3 + 3e-7 * np.abs(q)  # float32 rounding of value / scale
        # Equal, but where b / step falls within float32 rounding of a tie: there the
        # converter may round the other way, by one step.
        assert np.all(steps < 1.0 + tol), (layer.name, steps)
        exact_grid += int(np.sum(steps < tol))
        exact_float += int(np.sum(np.abs(float_bias / scales - q) < tol))
        total += steps.size
    assert exact_grid >= 0.9 * total, (exact_grid, total)
    assert exact_float <= 0.1 * total, (exact_float, total)  # a float bias is off its grid
