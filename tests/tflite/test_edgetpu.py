import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import shutil  # noqa: E402

import pytest  # noqa: E402

import tfkd.tflite as tfl  # noqa: E402

CANNED_LOG = """\
Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 40 ms.

Input model: student_int8.tflite
Input size: 7.95KiB
Output model: build/student_int8_edgetpu.tflite
Output size: 61.38KiB
On-chip memory used for caching model parameters: 13.00KiB
On-chip memory remaining for caching model parameters: 7.93MiB
Off-chip memory used for streaming uncached model parameters: 0.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 9
Operation log: build/student_int8_edgetpu.log

Model successfully compiled but not all operations are supported by the Edge TPU. A percentage \
of the model will instead run on the CPU, which is slower. If possible, consider updating your \
model to use only operations supported by the Edge TPU. For details, visit g.co/coral/model-reqs.
Number of operations that will run on Edge TPU: 5
Number of operations that will run on CPU: 4

Operator                       Count      Status

CONV_2D                        2          Mapped to Edge TPU
DEPTHWISE_CONV_2D              1          Mapped to Edge TPU
ADD                            1          Mapped to Edge TPU
HARD_SWISH                     1          Operation not supported
AVERAGE_POOL_2D                1          Operation is working on an unsupported data type
MEAN                           1          More than one subgraph is not supported
FULLY_CONNECTED                1          More than one subgraph is not supported
QUANTIZE                       1          Mapped to Edge TPU
"""


@pytest.fixture(scope="module")
def int8_variant(tmp_path_factory, mnist, build_edge_net):
    (x, _), _ = mnist
    folder = tmp_path_factory.mktemp("edgetpu")

    def make(activation, **kw):
        path = folder / f"{activation}_{kw.get('batch_size', 1)}.tflite"
        tfl.convert(build_edge_net(activation), path, quantization="int8", input_type="int8",
                    representative_data=x[:32], **kw)
        return path

    return make


def test_edge_friendly_int8_model_maps_entirely(files):
    report = tfl.check_edgetpu(files["int8"])
    assert report.compatible, str(report)
    assert report.first_unmapped is None
    assert report.num_mapped == len(report.ops) == 7
    assert all(op.mapped and op.supported for op in report.ops)
    assert "compatible" in str(report)


@pytest.mark.parametrize("activation,op", [("leaky_relu", "LEAKY_RELU"),
                                           ("hard_swish", "HARD_SWISH")])
def test_unsupported_activation_cuts_the_graph(int8_variant, activation, op):
    report = tfl.check_edgetpu(int8_variant(activation))
    assert not report.compatible
    cut = report.first_unmapped
    assert cut.op == op and not cut.supported and "not supported" in cut.reason
    assert cut.layer == "dw_act"
    index = report.ops.index(cut)
    assert all(o.mapped for o in report.ops[:index])  # stem conv + depthwise stay on the TPU
    after = report.ops[index + 1:]
    assert after and not any(o.mapped for o in after)
    assert all(o.supported and "after the cut" in o.reason for o in after)
    assert op in str(report) and "cuts the graph" in str(report)


def test_float_model_is_not_compatible(files):
    report = tfl.check_edgetpu(files["float32"])
    assert not report.compatible
    assert report.first_unmapped.index == report.ops[0].index
    assert "float32" in report.first_unmapped.reason
    assert report.num_mapped == 0


def test_float_io_edges_do_not_cut_the_graph(trained_net, tmp_path, mnist):
    (x, _), _ = mnist
    path = tmp_path / "float_io.tflite"
    tfl.convert(trained_net, path, quantization="int8", representative_data=x[:32])
    report = tfl.check_edgetpu(path)
    assert report.compatible
    edges = [op for op in report.ops if op.boundary]
    assert [op.op for op in edges] == ["QUANTIZE", "DEQUANTIZE"]
    assert report.num_mapped == len(report.ops) - 2


def test_dynamic_batch_is_an_error(int8_variant):
    path = int8_variant("relu6", batch_size=None)
    with pytest.raises(tfl.EdgeTPUError, match="dynamic shapes"):
        tfl.check_edgetpu(path)
    with pytest.raises(tfl.EdgeTPUError, match="dynamic shapes"):
        tfl.compile_edgetpu(path)


def test_compile_without_compiler_says_how_to_install(files, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(tfl.EdgeTPUCompilerNotFoundError) as err:
        tfl.compile_edgetpu(files["int8"])
    msg = str(err.value)
    assert "not installed" in msg and "apt-get install edgetpu-compiler" in msg
    assert "check_edgetpu" in msg


def test_parse_canned_compiler_log():
    r = tfl.parse_compiler_log(CANNED_LOG)
    assert r["version"] == "16.0.384591198"
    assert r["success"]
    assert (r["total_ops"], r["ops_on_edgetpu"], r["ops_on_cpu"], r["subgraphs"]) == \
        (9, 5, 4, 1)
    assert r["output_model"] == "build/student_int8_edgetpu.tflite"
    ops = {o["op"]: o for o in r["operators"]}
    assert len(r["operators"]) == 8
    assert ops["CONV_2D"]["count"] == 2 and ops["CONV_2D"]["mapped"]
    assert not ops["HARD_SWISH"]["mapped"]
    assert ops["HARD_SWISH"]["status"] == "Operation not supported"
    # A log without the summary lines still adds up from the table.
    table_only = CANNED_LOG.split("Number of operations that will run on Edge TPU")[0] + \
        CANNED_LOG.split("Number of operations that will run on CPU: 4")[1]
    r2 = tfl.parse_compiler_log(table_only)
    assert (r2["ops_on_edgetpu"], r2["ops_on_cpu"]) == (5, 4)


# --- RESIZE_BILINEAR / RESIZE_NEAREST_NEIGHBOR: certain errors and uncertain findings ------


class _V1Resize:
    """Layers resizing with tf.compat.v1's explicit half_pixel_centers / align_corners (what
    Keras 3 layers cannot set): bilinear or nearest, to a fixed size."""

    @staticmethod
    def make(size, method="bilinear", half_pixel_centers=False, align_corners=False):
        import keras
        import tensorflow as tf

        fn = tf.compat.v1.image.resize_bilinear if method == "bilinear" else \
            tf.compat.v1.image.resize_nearest_neighbor

        class V1Resize(keras.layers.Layer):
            def call(self, x):
                return fn(x, size, align_corners=align_corners,
                          half_pixel_centers=half_pixel_centers)

        return V1Resize(name="v1_resize")


@pytest.fixture(scope="module")
def resize_report(tmp_path_factory):
    """Builds conv -> resize -> conv with the given upsampling layer, converts it int8 (int8
    I/O) and returns its Edge TPU report."""
    import keras
    import numpy as np

    folder = tmp_path_factory.mktemp("resize")
    count = [0]

    def make(upsample, size=8):
        keras.utils.set_random_seed(0)
        inp = keras.Input((size, size, 3))
        x = keras.layers.Conv2D(4, 3, padding="same", name="enc")(inp)
        x = upsample(x)
        out = keras.layers.Conv2D(2, 1, name="head")(x)
        count[0] += 1
        path = folder / f"resize_{count[0]}.tflite"
        tfl.convert(keras.Model(inp, out), path, quantization="int8", input_type="int8",
                    representative_data=np.random.default_rng(0).random(
                        (8, size, size, 3)).astype("float32"))
        return tfl.check_edgetpu(path)

    return make


def _resize_op(report):
    ops = [op for op in report.ops if op.op.startswith("RESIZE_")]
    assert len(ops) == 1, str(report)
    return ops[0]


@pytest.mark.parametrize("layer,op_name", [
    ("Resizing", "RESIZE_BILINEAR"), ("UpSampling2D", "RESIZE_BILINEAR"),
    ("ResizingNearest", "RESIZE_NEAREST_NEIGHBOR")])
def test_keras_2x_upsampling_is_compatible_but_uncertain(resize_report, layer, op_name):
    """Integer 2x with the TF2 defaults (half_pixel_centers=True, op version 3): every published
    rule holds, but compilers 14-15 refused version-3 resizes: mapped, not certain."""
    import keras

    upsample = {"Resizing": lambda: keras.layers.Resizing(16, 16, interpolation="bilinear"),
                "UpSampling2D": lambda: keras.layers.UpSampling2D(2, interpolation="bilinear"),
                "ResizingNearest": lambda: keras.layers.Resizing(16, 16,
                                                                 interpolation="nearest")}
    report = resize_report(upsample[layer]())
    op = _resize_op(report)
    assert op.op == op_name and op.supported and op.mapped and not op.certain
    assert len(op.warnings) == 1 and "half_pixel_centers=True (op version 3)" in op.warnings[0]
    assert op.reason.startswith("may not map: half_pixel_centers=True")
    assert report.compatible and report.first_unmapped is None
    assert report.uncertain == [op] and report.num_mapped == len(report.ops) == 3
    text = str(report)
    assert "1 of them may not map" in text and "TPU?" in text
    assert "the 1 mapped op after it runs on the CPU too" in text
    d = report.to_dict()
    assert [u["op"] for u in d["uncertain"]] == [op_name] and d["compatible"]
    assert d["uncertain"][0]["certain"] is False


def test_integer_upsampling_without_half_pixel_centers_is_certain(resize_report):
    report = resize_report(_V1Resize.make((16, 16)))
    op = _resize_op(report)
    assert op.op == "RESIZE_BILINEAR" and op.mapped and op.certain and op.warnings == []
    assert op.reason == "mapped to Edge TPU" and report.uncertain == []
    assert report.to_dict()["uncertain"] == [] and "may not map" not in str(report)
    nearest = _resize_op(resize_report(_V1Resize.make((16, 16), method="nearest")))
    assert nearest.op == "RESIZE_NEAREST_NEIGHBOR" and nearest.certain


@pytest.mark.parametrize("kwargs,size,expect", [
    (dict(size=(12, 12)), 8, "scale factor 1.5 x 1.5 (8x8 -> 12x12)"),
    (dict(size=(16, 8)), 8, "scale factor 2 x 1 (8x8 -> 16x8)"),
    (dict(size=(4, 4)), 8, "scale factor 0.5 x 0.5"),
    (dict(size=(64, 64)), 8, "8x upscale"),
    (dict(size=(144, 144)), 72, "output 144x144 is larger than 128"),
    (dict(size=(15, 15), align_corners=True), 8, "scale factor 1.88 x 1.88"),
    (dict(size=(16, 16), method="nearest", align_corners=True), 8,
     "align_corners=True (op version 3)"),
])
def test_size_dependent_resizes_are_uncertain(resize_report, kwargs, size, expect):
    report = resize_report(_V1Resize.make(**kwargs), size=size)
    op = _resize_op(report)
    assert op.mapped and not op.certain and report.compatible
    assert len(op.warnings) == 1 and expect in op.warnings[0], op.warnings
    assert report.uncertain == [op]


def test_nearest_upsampling2d_is_certainly_cut(resize_report):
    """Keras' nearest UpSampling2D is no resize op: RESHAPE to 5-D + TILE, certain failures."""
    import keras

    report = resize_report(keras.layers.UpSampling2D(2))
    assert not report.compatible and report.first_unmapped.certain
    assert report.first_unmapped.op == "RESHAPE" and "TILE" in [o.op for o in report.ops]
    assert "more than 3 non-unit" in report.first_unmapped.reason
    assert report.uncertain == []


def test_doubts_after_a_certain_cut_leave_the_op_on_the_cpu(resize_report):
    """An uncertain resize after the cut runs on the CPU for sure: certain, warnings kept."""
    import keras

    def leaky_then_resize(x):
        x = keras.layers.LeakyReLU(0.1, name="leaky")(x)
        return keras.layers.Resizing(16, 16, interpolation="bilinear")(x)

    report = resize_report(leaky_then_resize)
    op = _resize_op(report)
    assert report.first_unmapped.op == "LEAKY_RELU"
    assert not op.mapped and op.certain and "after the cut" in op.reason
    assert op.warnings and report.uncertain == []
