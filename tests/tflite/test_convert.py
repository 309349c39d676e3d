import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tfkd.tflite as tfl  # noqa: E402
import importlib  # noqa: E402

# The module that writes files atomically (imported by name: tfl.files is not exported).
files_mod = importlib.import_module("tfkd.tflite.files")


def _run(path, x):
    """Raw interpreter outputs, one sample at a time (independent of tfl.evaluate)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    res = []
    for sample in x:
        it.set_tensor(inp["index"], sample[None].astype(inp["dtype"]))
        it.invoke()
        res.append(it.get_tensor(out["index"])[0])
    return np.stack(res)


def test_float32_matches_keras_with_static_batch_one(files, trained_net, mnist):
    _, (x, _) = mnist
    report = files["float32_report"]
    assert report.inputs[0].shape_signature == (1, 14, 14, 1)
    assert report.outputs[0].shape_signature == (1, 10)
    assert report.path == str(files["float32"])
    assert report.size_bytes == os.path.getsize(files["float32"])
    assert not report.is_fully_int8
    np.testing.assert_allclose(_run(files["float32"], x[:20]),
                               trained_net.predict(x[:20], verbose=0), atol=1e-5)


def test_dynamic_batch_kept_with_batch_size_none(trained_net, tmp_path, mnist):
    _, (x, _) = mnist
    report = tfl.convert(trained_net, tmp_path / "dyn.tflite", batch_size=None)
    assert report.inputs[0].shape_signature[0] == -1
    assert report.has_dynamic_shapes
    # evaluate resizes the dynamic batch to 1 and still runs.
    assert tfl.evaluate(tmp_path / "dyn.tflite", (x[:10], np.zeros(10, int)))[
        "num_samples"] == 10


def test_float16_and_dynamic_range(trained_net, tmp_path, mnist, files):
    _, (x, _) = mnist
    ref = trained_net.predict(x[:20], verbose=0)
    f16 = tfl.convert(trained_net, tmp_path / "f16.tflite", quantization="float16")
    assert "float16" in f16.tensor_dtypes
    assert f16.inputs[0].dtype == "float32"
    np.testing.assert_allclose(_run(tmp_path / "f16.tflite", x[:20]), ref, atol=2e-2)

    # Dynamic range quantization skips weights under 1024 elements, so use a wider net.
    import keras

    keras.utils.set_random_seed(0)
    mlp = keras.Sequential([keras.Input((14, 14, 1)), keras.layers.Flatten(),
                            keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)])
    f32 = tfl.convert(mlp, tmp_path / "mlp.tflite")
    dyn = tfl.convert(mlp, tmp_path / "dyn.tflite", quantization="dynamic")
    assert "int8" in dyn.tensor_dtypes and dyn.inputs[0].dtype == "float32"
    assert dyn.size_bytes < 0.5 * f32.size_bytes
    out, ref = _run(tmp_path / "dyn.tflite", x[:50]), mlp.predict(x[:50], verbose=0)
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()


def test_int8_ptq_is_fully_int8_and_agrees_with_keras(files, trained_net, mnist):
    _, (x, y) = mnist
    report = files["int8_report"]
    assert report.is_fully_int8
    assert report.inputs[0].dtype == "int8" and report.outputs[0].dtype == "int8"
    assert report.inputs[0].scale > 0
    assert "QUANTIZE" not in report.op_counts and "DEQUANTIZE" not in report.op_counts
    result = tfl.parity(trained_net, files["int8"], x, max_samples=200)
    assert result["num_samples"] == 200
    assert result["top1_agreement"] >= 0.9
    assert result["mean_lsb"] is not None and result["mean_lsb"] < 5
    keras_acc = float(np.mean(trained_net.predict(x, verbose=0).argmax(-1) == y))
    assert keras_acc > 0.5  # the net learned something, so agreement is meaningful
    assert abs(tfl.evaluate(files["int8"], (x, y))["accuracy"] - keras_acc) < 0.05


def test_int8_from_batched_tf_data_with_float_io(trained_net, tmp_path, mnist):
    import tensorflow as tf

    (x, y), _ = mnist
    ds = tf.data.Dataset.from_tensor_slices((x[:64, ..., 0], y[:64])).batch(16)  # no channel
    report = tfl.convert(trained_net, tmp_path / "io_f32.tflite", quantization="int8",
                         representative_data=ds)
    assert report.inputs[0].dtype == "float32" and report.outputs[0].dtype == "float32"
    # Only the edges convert: QUANTIZE in, DEQUANTIZE out, int8 everywhere else.
    assert report.ops[0].name == "QUANTIZE" and report.ops[-1].name == "DEQUANTIZE"
    assert report.op_counts["QUANTIZE"] == 1 and report.op_counts["DEQUANTIZE"] == 1


def test_uint8_io(trained_net, tmp_path, mnist):
    (x, _), _ = mnist
    report = tfl.convert(trained_net, tmp_path / "u8.tflite", quantization="int8",
                         representative_data=x[:50], input_type="uint8")
    assert report.inputs[0].dtype == "uint8" and report.outputs[0].dtype == "uint8"


def test_qat_conversion_is_fully_int8_and_sub_lsb(fake_quant, tmp_path):
    model = fake_quant.build()
    rng = np.random.default_rng(1)
    x = rng.random((100, 8, 8, 3)).astype("float32")
    report = tfl.convert(model, tmp_path / "qat.tflite", quantization="qat", input_type="int8")
    assert report.is_fully_int8
    assert set(report.op_counts) == {"CONV_2D", "RESHAPE", "FULLY_CONNECTED"}
    # The input range [0, 1] of the model's first fake-quant becomes the input's scale.
    assert report.inputs[0].scale == pytest.approx(1 / 255, rel=1e-5)
    result = tfl.parity(model, tmp_path / "qat.tflite", x)
    assert result["mean_lsb"] < 1.0
    assert result["top1_agreement"] >= 0.95


def test_verifier_names_the_float_layer_of_a_qat_model(fake_quant, tmp_path):
    # No fake-quant after the Dense: the converter leaves it float and the output float.
    model = fake_quant.build(with_output_range=False)
    with pytest.raises(tfl.QuantizationVerificationError) as err:
        tfl.convert(model, tmp_path / "island.tflite", quantization="qat", input_type="int8")
    problems = err.value.problems
    assert {"FULLY_CONNECTED", "DEQUANTIZE"} <= {p["op"] for p in problems}
    assert any(p["op"] == "FULLY_CONNECTED" and p["layer"] == "logits" for p in problems)
    assert any("float32 but int8 was asked" in p["reason"] for p in problems)
    assert "'logits'" in str(err.value) and "Fix:" in str(err.value)
    assert not (tmp_path / "island.tflite").exists()  # nothing written on failure


def test_verifier_flags_every_float_op_of_a_float_graph(files):
    report = files["float32_report"]
    with pytest.raises(tfl.QuantizationVerificationError) as err:
        tfl.verify_int8(report, input_type="int8",
                        layer_names={"stem", "dw", "pw", "residual", "avgpool", "gap",
                                     "logits", "edge_net", "stem_relu", "dw_act"})
    layers = {p["layer"] for p in err.value.problems}
    assert "logits" in layers and layers & {"stem", "stem_relu"}  # conv+relu6 fuse
    assert any("input" in p["reason"] and "float32 but int8" in p["reason"]
               for p in err.value.problems)
    # The int8 file passes the same check.
    assert tfl.verify_int8(files["int8_report"], input_type="int8") is files["int8_report"]


def test_int8_without_representative_data_is_an_error(trained_net, tmp_path):
    with pytest.raises(tfl.RepresentativeDataError, match="representative_data"):
        tfl.convert(trained_net, tmp_path / "x.tflite", quantization="int8")


@pytest.mark.parametrize("empty", ["numpy", "tf.data", "generator"])
def test_empty_representative_data_is_an_error(trained_net, tmp_path, empty):
    import tensorflow as tf

    x = np.zeros((0, 14, 14, 1), "float32")
    data = {"numpy": x, "tf.data": tf.data.Dataset.from_tensor_slices(x).batch(4),
            "generator": (s for s in x)}[empty]
    with pytest.raises(tfl.EmptyDataError, match="empty"):
        tfl.convert(trained_net, tmp_path / "x.tflite", quantization="int8",
                    representative_data=data)
    assert not (tmp_path / "x.tflite").exists()


def test_bad_arguments(trained_net, tmp_path):
    with pytest.raises(tfl.ConversionError, match="quantization="):
        tfl.convert(trained_net, tmp_path / "x.tflite", quantization="int4")
    with pytest.raises(tfl.ConversionError, match="integer graph"):
        tfl.convert(trained_net, tmp_path / "x.tflite", input_type="int8")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(tfl.ConversionError, match="does not exist"):
        tfl.convert(trained_net, blocker / "x.tflite")


def test_failed_conversion_leaves_old_file_untouched(trained_net, tmp_path, monkeypatch):
    import tensorflow as tf

    target = tmp_path / "model.tflite"
    target.write_bytes(b"old model")

    class Boom:
        def __init__(self, *a, **k):
            self.target_spec = type("S", (), {})()
            self.optimizations = []

        @classmethod
        def from_keras_model(cls, model):
            return cls()

        def convert(self):
            raise RuntimeError("simulated converter crash")

    monkeypatch.setattr(tf.lite, "TFLiteConverter", Boom)
    with pytest.raises(tfl.ConversionError, match="simulated converter crash"):
        tfl.convert(trained_net, target)
    assert target.read_bytes() == b"old model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite"]


def test_write_failure_midway_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "model.tflite"
    target.write_bytes(b"old model")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files_mod.os, "fsync", broken_fsync)
    with pytest.raises(tfl.ConversionError, match="No space left"):
        files_mod.write_atomic(target, b"new model bytes")
    assert target.read_bytes() == b"old model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite"]
    monkeypatch.undo()
    files_mod.write_atomic(target, b"new model bytes")
    assert target.read_bytes() == b"new model bytes"


def test_written_files_get_the_umask_permissions_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        files_mod.write_atomic(tmp_path / "m.tflite", b"bytes")
    finally:
        os.umask(old)
    assert (tmp_path / "m.tflite").stat().st_mode & 0o777 == 0o644


def test_labels_and_normalization_sidecar(trained_net, tmp_path):
    labels = [f"digit_{i}" for i in range(10)]
    tfl.convert(trained_net, tmp_path / "net.tflite", labels=labels,
                normalization=(0.0, 255.0), output_meaning="logits")
    assert (tmp_path / "net.labels.txt").read_text().splitlines() == labels
    info = json.loads((tmp_path / "net.json").read_text())
    assert info["labels"] == labels and info["labels_file"] == "net.labels.txt"
    assert info["input"]["normalization"] == {"mean": [0.0], "std": [255.0]}
    assert info["input"]["shape"] == [1, 14, 14, 1]
    assert info["output"]["meaning"] == "logits"
    assert tfl.read_sidecar(tmp_path / "net.tflite") == info
    assert tfl.read_metadata(tmp_path / "net.tflite")["labels"] == labels
    with pytest.raises(tfl.TFLiteError, match="3 labels for an output of 10"):
        tfl.write_metadata(tmp_path / "net.tflite", labels=["a", "b", "c"])
