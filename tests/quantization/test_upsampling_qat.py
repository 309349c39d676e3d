"""Super-resolution upsamplers through quantization-aware training to int8 TFLite.

Each `tfkd.students.upsampling.upsample` method in a tiny x2 SR model (pixels in [0, 255] ->
Rescaling -> Conv-ReLU -> upsample -> Conv -> Rescaling(255)) quantizes with
`quantize_model`, converts to a fully int8 file with its upsampling op (TRANSPOSE_CONV,
DEPTH_TO_SPACE, RESIZE_BILINEAR) in int8, matches the Keras QAT model to a fraction of an
LSB, and meets `check_edgetpu` where Coral's table says it should.
"""
import doctest
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import keras

from tfkd.quantization import layers as qlayers
from tfkd.quantization import quantize_model, set_quantization_enabled
from tfkd.students import upsampling
from tfkd.students.upsampling import PixelShuffle, upsample

L = keras.layers

# The op each method must produce in the int8 graph.
UPSAMPLING_OP = {"transpose": "TRANSPOSE_CONV", "pixel_shuffle": "DEPTH_TO_SPACE",
                 "resize": "RESIZE_BILINEAR"}
# Parity of the file with the Keras QAT model, in LSB of the output scale (reference int8
# kernels, 32 held-out images, seed 0). Measured, TF 2.21 / ai-edge-litert on this CPU:
#   transpose      mean 0.033, max 3   (0.003 mean at TRANSPOSE_CONV itself: 197 of 65,536
#                                        values 1 LSB off; the 1-channel conv after it
#                                        scales a 1-LSB input flip up to 3 output LSB)
#   pixel_shuffle  mean 0.019, max 1   (DEPTH_TO_SPACE adds no error of its own)
#   resize         mean 0.69,  max 5   (RESIZE_BILINEAR's tie rounding, see transform.py's
#                                        known limits: 5% of its outputs 1 LSB below Keras, one
#                                        way only, which the two convs after it sum)
# Each bound sits just above its measurement, so a regression shows as a step.
MEAN_LSB = {"transpose": 0.05, "pixel_shuffle": 0.03, "resize": 0.75}
MAX_LSB = {"transpose": 3, "pixel_shuffle": 1, "resize": 5}


def sr_model(method, shape=(16, 16, 1), scale=2):
    inputs = keras.Input(shape, name="image")
    x = L.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="features")(x)
    x = upsample(x, scale, 8, method=method, name="up")
    x = L.Conv2D(1, 3, padding="same", name="reconstruct")(x)
    outputs = L.Rescaling(255.0, name="pixels")(x)
    return keras.Model(inputs, outputs, name=f"sr_{method}")


def _randomize_bn(model, seed=1):
    # Statistics far from (0, 1), so that folding into the (transposed) conv is exercised.
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            c = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(size=c) * 0.05)
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, size=c) * 0.01)
            layer.gamma.assign(rng.uniform(0.5, 1.5, size=c))
            layer.beta.assign(rng.normal(size=c) * 0.2)
    return model


def _images(n, seed, size=16):
    """Smooth low-resolution images (upsampled 4x4 noise) in [0, 255] and their x2 targets."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (n, size // 4, size // 4, 1)).astype("float32")
    lo = np.asarray(keras.ops.image.resize(coarse, (size, size), interpolation="bilinear"))
    hi = np.asarray(keras.ops.image.resize(coarse, (2 * size, 2 * size),
                                           interpolation="bilinear"))
    return np.clip(lo, 0, 255), np.clip(hi, 0, 255)


@pytest.fixture(scope="module")
def data():
    return _images(96, 0), _images(32, 1)[0]


@pytest.mark.parametrize("method", sorted(UPSAMPLING_OP))
def test_upsampler_converts_fully_int8_with_lsb_parity(method, data, int8_tools, tmp_path):
    from tfkd.tflite import check_edgetpu, convert

    keras.utils.set_random_seed(0)
    (x, y), x_test = data
    model = _randomize_bn(sr_model(method))
    qat = quantize_model(model, calibration_data=x[:64], calibration_steps=2)
    assert {l.name for l in model.layers} <= {l.name for l in qat.layers}
    qat.compile(keras.optimizers.Adam(1e-3), "mse")
    qat.fit(x, y, epochs=1, batch_size=32, verbose=0)  # 3 steps: ranges and bias grids move

    path = os.path.join(str(tmp_path), f"{method}.tflite")
    report = convert(qat, path, quantization="qat", input_type="int8", output_type="int8")
    assert report.is_fully_int8, report
    interp = int8_tools["interpreter"](open(path, "rb").read())
    # No QUANTIZE / DEQUANTIZE, every activation tensor int8 (int32 only for biases / shapes).
    ops = int8_tools["fully_int8"](interp)
    op = UPSAMPLING_OP[method]
    assert ops.count(op) == 1, ops
    details = interp.get_tensor_details()
    up = next(o for o in interp._get_ops_details() if o["op_name"] == op)
    data_inputs = [i for i in up["inputs"] if i >= 0 and details[i]["dtype"] != np.int32]
    assert all(details[i]["dtype"] == np.int8 for i in data_inputs + list(up["outputs"]))

    if method == "transpose":
        # The ReLU is an op of its own (no fusion into TRANSPOSE_CONV) on its input's scale.
        assert ops[ops.index(op) + 1] == "RELU", ops
        _assert_transpose_weights_are_the_simulated_ones(qat.get_layer("up_transpose"),
                                                         interp, up)
        relu = next(o for o in interp._get_ops_details() if o["op_name"] == "RELU")
        assert (details[relu["inputs"][0]]["quantization"]
                == details[relu["outputs"][0]]["quantization"])
    if method in ("pixel_shuffle", "resize"):
        # Same-scale ops: output on the input's scale and zero point (no requantize).
        (i,), (o,) = data_inputs, up["outputs"]
        assert details[i]["quantization"] == details[o]["quantization"]

    mean, worst, _ = int8_tools["parity"](qat, open(path, "rb").read(), x_test)
    print(f"{method}: ops={ops} mean={mean:.4f} LSB max={worst:.0f} LSB")
    assert mean < MEAN_LSB[method], f"{method}: mean {mean:.4f} LSB (max {worst})"
    # The Keras side is float: a whole-LSB difference reads as 1.00002.
    assert round(worst, 3) <= MAX_LSB[method], f"{method}: max {worst} LSB"

    edgetpu = check_edgetpu(path)
    if method == "pixel_shuffle":
        cut = edgetpu.first_unmapped
        assert cut is not None and cut.op == "DEPTH_TO_SPACE", str(edgetpu)
        assert "method='transpose'" in cut.reason, cut.reason
        assert all(v.mapped for v in edgetpu.ops if v.index < cut.index), str(edgetpu)
    else:
        assert edgetpu.compatible, str(edgetpu)
        assert all(v.mapped for v in edgetpu.ops), str(edgetpu)
        # Keras' bilinear upsampling has half-pixel centers: mapped, but a documented doubt.
        assert [v.op for v in edgetpu.uncertain] == (
            ["RESIZE_BILINEAR"] if method == "resize" else []), str(edgetpu)


def _assert_transpose_weights_are_the_simulated_ones(layer, interp, op):
    """The file's TRANSPOSE_CONV weights are the layer's rounded kernel: per output channel
    scale max|w| / 127, the same int8 values (the converter quantizes the float kernel; the
    layer's rounding keeps each channel's max, so both land on one grid)."""
    kernel = keras.ops.convert_to_numpy(layer.kernel)            # (h, w, out, in)
    scale = np.abs(kernel).max(axis=(0, 1, 3)) / 127.0
    expected = np.round(kernel / scale[None, None, :, None]).transpose(2, 0, 1, 3)
    weights = next(d for d in interp.get_tensor_details() if d["index"] == op["inputs"][1])
    stored = interp.get_tensor(weights["index"]).astype("float64")  # (out, h, w, in)
    q = weights["quantization_parameters"]
    assert q["quantized_dimension"] == 0 and q["scales"].shape == scale.shape
    np.testing.assert_allclose(q["scales"], scale, rtol=1e-6)
    np.testing.assert_array_equal(stored, expected)
    # And the Keras layer computes with exactly those values.
    simulated = keras.ops.convert_to_numpy(layer._quantize_kernel(layer.kernel))
    np.testing.assert_allclose(simulated, np.round(kernel / scale[None, None, :, None])
                               * scale[None, None, :, None], rtol=1e-6, atol=1e-9)


def test_bn_folds_exactly_into_the_transposed_conv(data):
    """Fake-quant off, the QAT model is the float model: BN folded along the output axis
    (axis 2 of the (h, w, out, in) kernel), the ReLU after it kept."""
    (x, _), _ = data
    model = _randomize_bn(sr_model("transpose"))
    qat = quantize_model(model)
    assert isinstance(qat.get_layer("up_transpose"), qlayers.QuantizedConv2DTranspose)
    assert qat.get_layer("up_transpose").use_bias  # the folded BN's shift
    # The ReLU after the transposed conv's folded BN shares its range (one int8 RELU scale).
    assert qat.get_layer("up").range_peers == ["up_bn"]
    set_quantization_enabled(qat, False)
    np.testing.assert_allclose(qat.predict(x[:8], verbose=0), model.predict(x[:8], verbose=0),
                               rtol=1e-4, atol=1e-3)


def test_qat_model_with_transpose_and_pixel_shuffle_round_trips(data, int8_tools, tmp_path):
    """get_config / from_config and save / load of a QAT model holding a
    QuantizedConv2DTranspose (with its own ReLU) and a PixelShuffle, on inputs of any size
    (None spatial dims); the loaded model converts as saved and matches its file."""
    from tfkd.tflite import convert

    (x, _), x_test = data
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 1), name="image")
    h = L.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    h = L.Conv2D(4, 3, padding="same", activation="relu", name="features")(h)
    h = L.Conv2DTranspose(4, 4, strides=2, padding="same", activation="relu", name="up1")(h)
    h = upsample(h, 2, 4, method="pixel_shuffle", name="up2")
    model = _randomize_bn(keras.Model(inputs, L.Conv2D(1, 3, padding="same", name="out")(h)))
    # Calibration runs the training path (ranges, bias grids); the parity test trains.
    qat = quantize_model(model, calibration_data=x[:32], calibration_steps=1)
    tconv = qat.get_layer("up1")
    assert isinstance(tconv, qlayers.QuantizedConv2DTranspose)
    # Its range is the pre-activation one (TRANSPOSE_CONV's int8 output, before the RELU).
    assert float(keras.ops.convert_to_numpy(tconv.range_min)) < 0
    assert isinstance(qat.get_layer("up2"), PixelShuffle)
    # The shuffle has no range of its own: the conv-ReLU before it quantizes its output.
    assert qat.get_layer("up2_conv").quantize_output is False
    assert qat.get_layer("up2_relu").quantize_output is True
    assert qat.get_layer("out").input_quantizer == "up2_relu"  # bias grid walks through it

    config = tconv.get_config()
    assert config["activation"] == "relu"
    assert qlayers.QuantizedConv2DTranspose.from_config(config).get_config() == config
    assert PixelShuffle.from_config(qat.get_layer("up2").get_config()).scale == 2

    path = os.path.join(str(tmp_path), "sr.keras")
    qat.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.get_layer("up1"), qlayers.QuantizedConv2DTranspose)
    for size in (8, 12):  # any input size
        batch = x[:4, :size, :size]
        expected = qat.predict(batch, verbose=0)
        assert expected.shape == (4, 4 * size, 4 * size, 1)
        np.testing.assert_array_equal(loaded.predict(batch, verbose=0), expected)

    tflite = os.path.join(str(tmp_path), "sr.tflite")
    report = convert(loaded, tflite, quantization="qat", input_type="int8", output_type="int8")
    # Any size: TRANSPOSE_CONV's output shape is int32 arithmetic on the input's (SHAPE,
    # STRIDED_SLICE, MUL, PACK), which `is_fully_int8` counts against it; no float anywhere.
    assert report.has_dynamic_shapes and "float32" not in report.tensor_dtypes, report
    counts = report.op_counts
    assert {op: counts.get(op) for op in ("TRANSPOSE_CONV", "RELU", "DEPTH_TO_SPACE")} == {
        "TRANSPOSE_CONV": 1, "RELU": 1, "DEPTH_TO_SPACE": 1}, counts
    assert not set(counts) & {"QUANTIZE", "DEQUANTIZE"}, counts
    content = open(tflite, "rb").read()
    for size in (16, 12):
        mean, worst, _ = int8_tools["parity"](loaded, content, x_test[:8, :size, :size])
        print(f"round trip, {size}x{size}: mean={mean:.4f} LSB max={worst:.0f} LSB")
        assert mean < 0.035 and round(worst, 3) <= 2, (size, mean, worst)


def test_pixel_shuffle_matches_numpy_depth_to_space():
    s, c = 3, 2
    x = np.random.default_rng(0).normal(size=(2, 4, 5, c * s * s)).astype("float32")
    n, h, w, _ = x.shape
    # out[n, h*s + i, w*s + j, k] = x[n, h, w, (i*s + j)*c + k]
    ref = x.reshape(n, h, w, s, s, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h * s, w * s, c)
    layer = PixelShuffle(s)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x)), ref)
    assert layer.compute_output_shape((None, None, 5, 18)) == (None, None, 15, 2)
    symbolic = layer(keras.Input((None, None, 18)))
    assert tuple(symbolic.shape) == (None, None, None, 2)
    with pytest.raises(ValueError, match="multiple of scale"):
        PixelShuffle(2)(keras.Input((4, 4, 6)))
    with pytest.raises(ValueError, match="int >= 2"):
        PixelShuffle(1)


def test_upsample_rejects_bad_arguments_naming_the_choices():
    x = keras.Input((None, None, 3))
    with pytest.raises(ValueError, match="'transpose', 'pixel_shuffle', 'resize'"):
        upsample(x, 2, 8, method="deconv")
    for scale in (1, 5, 2.0, True):
        with pytest.raises(ValueError, match=r"\(2, 3, 4\)"):
            upsample(x, scale, 8)
    with pytest.raises(ValueError, match="positive int"):
        upsample(x, 2, 0)


@pytest.mark.parametrize("method", upsampling.METHODS)
@pytest.mark.parametrize("scale", [3, 4])
def test_upsample_scales_any_input_size(method, scale):
    x = keras.Input((None, None, 3))
    y = upsample(x, scale, 4, method=method, name="up")
    model = keras.Model(x, y)
    out = model(np.zeros((1, 5, 6, 3), "float32"))
    assert tuple(out.shape) == (1, 5 * scale, 6 * scale, 4)
    assert model.layers[-1].name == "up"


def test_dilated_transpose_is_refused_with_a_fix():
    from tfkd.quantization import UnsupportedLayerError

    inputs = keras.Input((8, 8, 3))
    outputs = L.Conv2DTranspose(4, 3, dilation_rate=2, padding="same", name="up")(inputs)
    with pytest.raises(UnsupportedLayerError, match="TRANSPOSE_CONV has no dilation"):
        quantize_model(keras.Model(inputs, outputs))


def test_module_docstring_example_runs():
    result = doctest.testmod(upsampling, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
