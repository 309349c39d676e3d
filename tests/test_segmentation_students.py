"""tfkd.students.segmentation: LR-ASPP and U-Net students for per-pixel logits.

Sized for a 2-core machine: width-0.5 students, 16 real CamVid images, a few steps.
"""
import doctest
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from shared_paths import SHARED_DATA
from tfkd import students
from tfkd.students import segmentation

SEG = ("lraspp_mobile", "unet_mobile")
VOID = 11
ALLOWED_LAYERS = {"InputLayer", "Rescaling", "Conv2D", "DepthwiseConv2D", "BatchNormalization",
                  "ReLU", "Add", "Identity", "GlobalAveragePooling2D", "Activation", "Multiply",
                  "Resizing", "Concatenate"}


@pytest.fixture(scope="module")
def camvid():
    path = SHARED_DATA / "camvid.npz"
    if not path.exists():
        pytest.fail(f"{path} is missing: the tests need ../shared/data beside the repo.")
    with np.load(path) as data:
        return (data["x_train"][:16].astype("float32"), data["y_train"][:16].astype("int32"),
                data["x_test"][:8])


def test_names_by_task():
    assert students.names("segmentation") == ["lraspp_mobile", "unet_mobile"]
    assert students.names("classification") == ["mobile_cnn", "mobilenet_tiny", "resnet_tiny"]
    assert students.names("detection") == ["ssd_mobile"]
    assert students.names() == sorted(students.names("segmentation")
                                      + students.names("classification")
                                      + students.names("detection"))
    with pytest.raises(ValueError,
                       match="Unknown task 'faces'.*classification, detection, segmentation"):
        students.names("faces")


# Measured at 90x120x3, 11 classes (the table in segmentation's docstring).
PARAMS = {("lraspp_mobile", 0.5): 45_730, ("lraspp_mobile", 1.0): 159_662,
          ("lraspp_mobile", 2.0): 592_198, ("unet_mobile", 0.5): 47_267,
          ("unet_mobile", 1.0): 164_091, ("unet_mobile", 2.0): 606_443}


@pytest.mark.parametrize("name", SEG)
def test_params_per_width_and_edge_tpu_friendly_layers(name):
    counts = {}
    for width in (0.5, 1.0, 2.0):
        model = students.build(name, (90, 120, 3), 11, width=width)
        counts[width] = model.count_params()
        assert tuple(model.output.shape) == (None, 90, 120, 11)
        assert model.get_layer("logits") is model.layers[-1]
        kinds = {type(layer).__name__ for layer in model.layers}
        assert kinds <= ALLOWED_LAYERS, kinds - ALLOWED_LAYERS
        assert all(l.interpolation == "bilinear" for l in model.layers
                   if isinstance(l, keras.layers.Resizing))
        assert {l.activation.__name__ for l in model.layers
                if isinstance(l, keras.layers.Activation)} <= {"sigmoid"}
        assert all(l.negative_slope == 0 and l.max_value in (None, 6.0) for l in model.layers
                   if isinstance(l, keras.layers.ReLU))
    assert counts == {w: PARAMS[name, w] for w in counts}
    assert 35_000 < counts[0.5] < 60_000
    assert 150_000 < counts[1.0] < 250_000
    assert 450_000 < counts[2.0] < 700_000


@pytest.mark.parametrize("name", SEG)
def test_every_batch_norm_follows_its_own_conv(name):
    """Conv-BN-ReLU order: each BN reads a conv that feeds nothing else (so QAT folds it)."""
    model = students.build(name, (90, 120, 3), 11, width=0.5)
    feeds, fed_by = {}, {}
    for entry in model.get_config()["layers"]:
        producers = _producers(entry["inbound_nodes"])
        fed_by[entry["name"]] = producers
        for p in producers:
            feeds.setdefault(p, []).append(entry["name"])
    bns = [l.name for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert len(bns) > 20
    for bn in bns:
        (producer,) = fed_by[bn]
        layer = model.get_layer(producer)
        assert isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)), bn
        assert layer.activation.__name__ == "linear" and not layer.use_bias, producer
        assert feeds[producer] == [bn], (producer, feeds[producer])
        # ... and is followed by its ReLU6, except the linear bottleneck projections.
        if not producer.endswith("_project"):
            (consumer,) = feeds[bn]
            assert isinstance(model.get_layer(consumer), keras.layers.ReLU), (bn, consumer)


def _producers(obj):
    """Names of the layers whose outputs a serialized call reads."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            return [obj["config"]["keras_history"][0]]
        return [n for v in obj.values() for n in _producers(v)]
    if isinstance(obj, (list, tuple)):
        return [n for v in obj for n in _producers(v)]
    return []


@pytest.mark.parametrize("name, head", [("lraspp_mobile", (12, 15)), ("unet_mobile", (23, 30))])
def test_taps_at_their_strides_for_sizes_the_strides_do_not_divide(name, head):
    model = students.build(name, (90, 120, 3), 11, width=0.5)
    sizes = {tap: tuple(model.get_layer(tap).output.shape[1:3])
             for tap in ("stage1", "stage2", "stage3", "stage4", "head")}
    assert sizes == {"stage1": (45, 60), "stage2": (23, 30), "stage3": (12, 15),
                     "stage4": (6, 8), "head": head}
    assert model.get_layer("head").output.shape[-1] == {"lraspp_mobile": 32,
                                                        "unet_mobile": 16}[name]
    odd = students.build(name, (33, 47, 3), 5, width=0.5)
    out = odd.predict(np.full((2, 33, 47, 3), 128.0, "float32"), verbose=0)
    assert out.shape == (2, 33, 47, 5) and np.isfinite(out).all()
    assert tuple(odd.get_layer("stage4").output.shape[1:3]) == (3, 3)


@pytest.mark.parametrize("name", SEG)
def test_too_small_or_unknown_input_says_the_minimum(name):
    with pytest.raises(ValueError, match=r"input 24x120 is too small for output stride 16: "
                                         r"each side must be at least 32 pixels.*32x120"):
        students.build(name, (24, 120, 3), 11)
    with pytest.raises(ValueError, match=r"unknown dimension.*fixed height, width"):
        students.build(name, (None, None, 3), 11)
    with pytest.raises(ValueError, match=r"\(height, width, channels\)"):
        students.build(name, (90, 120), 11)
    # A front end that shrinks the image is checked where the encoder starts.
    shrink = keras.layers.AveragePooling2D(4)
    with pytest.raises(ValueError, match=r"encoder input.*22x30 is too small"):
        students.build(name, (90, 120, 3), 11, front_end=shrink)
    assert segmentation.MIN_SIZE == 32
    students.build(name, (32, 32, 3), 11, width=0.5)  # the minimum itself builds


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=VOID)


@pytest.fixture(scope="module")
def trained(camvid):
    """A width-0.5 LR-ASPP student after 8 steps on 16 CamVid images; its loss before / after.

    Eagerly: tracing the train step of a 100-layer model costs more (~12 s here) than 8
    eager steps (~8 s). 8 steps leave BatchNormalization's moving statistics stale whatever
    the momentum, so they are re-estimated before the model is evaluated (as before export).
    """
    from tfkd.batch_norm import momentum_for_steps, recompute_statistics

    x, y, _ = camvid
    keras.utils.set_random_seed(0)
    model = students.build("lraspp_mobile", (90, 120, 3), 11, width=0.5,
                           bn_momentum=momentum_for_steps(8))
    model.compile(keras.optimizers.Adam(1e-2), _loss(), run_eagerly=True)
    before = model.evaluate(x, y, batch_size=16, verbose=0)
    model.fit(x, y, batch_size=8, epochs=4, verbose=0)
    recompute_statistics(model, x, batch_size=16)
    after = model.evaluate(x, y, batch_size=16, verbose=0)
    return model, before, after


def test_training_steps_on_camvid_lower_the_loss(trained):
    model, before, after = trained
    assert abs(before - np.log(11)) < 0.3, before  # near-uniform logits at initialization
    assert after < 0.55 * before, (before, after)


def test_qat_int8_tflite_is_fully_int8_with_pixel_parity(trained, camvid, tmp_path):
    """The calibrated QAT model of the trained student converts to a fully int8 file whose
    per-pixel decisions match the QAT Keras model on held-out CamVid images (QAT training
    itself is tested in tests/quantization; it leaves the conversion path unchanged)."""
    import tfkd.tflite as tfl
    from tfkd.quantization import quantize_model

    model, _, _ = trained
    x, _, x_test = camvid
    qat = quantize_model(model, calibration_data=x, calibration_steps=2)
    assert type(qat.get_layer("aspp_mul")).__name__ == "QuantizedMultiply"
    assert qat.get_layer("aspp_gate")._fixed_range == (0.0, 255.0 / 256.0)
    path = str(tmp_path / "lraspp_int8.tflite")
    report = tfl.convert(qat, path, quantization="qat", input_type="uint8", output_type="int8")
    assert report.is_fully_int8, report
    counts = report.op_counts
    assert {op: counts.get(op) for op in ("MEAN", "LOGISTIC", "MUL", "RESIZE_BILINEAR")} == {
        "MEAN": 1, "LOGISTIC": 1, "MUL": 1, "RESIZE_BILINEAR": 2}, counts
    assert counts["CONV_2D"] >= 15 and counts["DEPTHWISE_CONV_2D"] >= 8, counts
    assert not set(counts) & {"DEQUANTIZE", "RELU6", "RELU"}, counts  # ReLU6 fused everywhere
    result = tfl.parity(qat, path, x_test)
    print(f"lraspp_mobile w0.5 QAT int8: {dict(counts)}; per-pixel argmax agreement "
          f"{result['top1_agreement']:.4f}, mean {result['mean_lsb']:.3f} LSB, "
          f"max {result['max_lsb']:.0f} LSB")
    assert result["num_samples"] == 8
    assert result["top1_agreement"] >= 0.99, result
    assert result["mean_lsb"] < 0.2, result  # biases on TFLite's int32 grid (0.43 without)
    edge = tfl.check_edgetpu(path)
    assert edge.compatible, str(edge)


def test_unet_qat_shares_concat_ranges_and_puts_every_bias_on_its_grid(camvid):
    """The U-Net's QAT plan (its int8 file, 2 CONCATENATION and 3 RESIZE_BILINEAR, fully
    int8, is too slow to convert in this file's budget; the same plan on a small U-Net
    converts in tests/quantization/test_dense_qat.py)."""
    from tfkd.quantization import layers as qlayers
    from tfkd.quantization import quantize_model

    x, _, _ = camvid
    keras.utils.set_random_seed(0)
    model = students.build("unet_mobile", (90, 120, 3), 11, width=0.5)
    qat = quantize_model(model, calibration_data=x[:8], calibration_steps=1)
    # Each Concatenate, its upsampling and its skip (an Add that also feeds the next encoder
    # stage) quantize with one shared range: TF 2.21 refuses the file otherwise.
    for group in (("cat1", "up1", "b5_add"), ("cat2", "up2", "b3_add")):
        assert all(qat.get_layer(n).shared_range for n in group), group
    lo, hi = (float(v) for v in qat.get_layer("cat1").grid_range())
    assert (lo, hi) == tuple(float(v) for v in qat.get_layer("b5_add").grid_range())
    # Every biased layer knows the layer that quantizes its input, and (calibration ran in
    # training mode) stored its scale; a shared range's members read last step's copy.
    biased = [l for l in qat.layers if isinstance(l, (qlayers.QuantizedConv2D,
                                                      qlayers.QuantizedDepthwiseConv2D))
              and l.use_bias]
    assert len(biased) > 25
    for layer in biased:
        source = qat.get_layer(layer.input_quantizer)
        assert layer._linked_input is source
        assert float(layer.input_scale) > 0, layer.name
        if not source.shared_range:
            assert float(layer.input_scale) == pytest.approx(float(source.grid_scale()))
    assert qat.get_layer("dec1_dw").input_quantizer == "cat1"
    assert qat.get_layer("b6_expand_conv").input_quantizer == "b5_add"  # through `stage3`
    assert qat.get_layer("stem_conv").input_quantizer == "rescale"
    out = keras.ops.convert_to_numpy(qat(x[:2], training=False))
    assert out.shape == (2, 90, 120, 11) and np.isfinite(out).all()


def test_docstring_examples_run():
    result = doctest.testmod(segmentation, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
    result = doctest.testmod(students, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
