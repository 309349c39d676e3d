"""inspect, evaluate, parity, benchmark and the data sources they accept."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tfkd.tflite as tfl  # noqa: E402
from tfkd.tflite.data import take_samples  # noqa: E402


def test_inspect_lists_ops_dtypes_and_io(files):
    report = tfl.inspect(files["int8"])
    assert report.op_counts == {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 1, "ADD": 1,
                                "AVERAGE_POOL_2D": 1, "MEAN": 1, "FULLY_CONNECTED": 1}
    assert report.size_bytes == os.path.getsize(files["int8"])
    inp = report.inputs[0]
    assert (inp.dtype, inp.shape_signature) == ("int8", (1, 14, 14, 1))
    assert inp.scale == pytest.approx(1 / 255, rel=1e-3) and inp.zero_point == -128
    conv = next(op for op in report.ops if op.name == "CONV_2D")
    assert [t.dtype for t in conv.inputs] == ["int8", "int8", "int32"]
    assert conv.inputs[1].constant and conv.inputs[1].per_channel
    assert "stem" in conv.outputs[0].name  # tensor names keep the Keras layer name
    d = report.to_dict()
    assert d["is_fully_int8"] and d["inputs"][0]["shape"] == [1, 14, 14, 1]
    assert "CONV_2D" in str(report)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(tfl.ModelFileError, match="No .tflite file"):
        tfl.inspect(tmp_path / "nope.tflite")
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00garbage, not a flatbuffer" * 10)
    for fn in (tfl.inspect, tfl.check_edgetpu, tfl.benchmark):
        with pytest.raises(tfl.ModelFileError, match="not a loadable TFLite model"):
            fn(bad)
    with pytest.raises(tfl.ModelFileError):
        tfl.evaluate(bad, (np.zeros((1, 4)), np.zeros(1)))


def test_truncated_file_is_corrupt(files, tmp_path):
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(files["int8"].read_bytes()[:1000])
    with pytest.raises(tfl.ModelFileError):
        tfl.inspect(cut)


def test_evaluate_accuracy_matches_numpy_on_interpreter_outputs(files, mnist):
    from ai_edge_litert.interpreter import Interpreter

    _, (x, y) = mnist
    it = Interpreter(model_path=str(files["int8"]))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    scale, zp = inp["quantization"]
    preds = []
    for sample in x:
        q = np.clip(np.round(sample / scale + zp), -128, 127).astype(np.int8)
        it.set_tensor(inp["index"], q[None])
        it.invoke()
        preds.append(it.get_tensor(out["index"])[0].argmax())
    expected = float(np.mean(np.asarray(preds) == y))

    import keras

    result = tfl.evaluate(files["int8"], (x, y),
                          metrics=("accuracy", keras.metrics.SparseCategoricalAccuracy()))
    assert result["num_samples"] == len(x)
    assert result["accuracy"] == pytest.approx(expected, abs=1e-9)
    assert result["sparse_categorical_accuracy"] == pytest.approx(expected, abs=1e-6)
    # one-hot labels, max_samples, and a dict source give the same numbers
    one_hot = np.eye(10)[y]
    assert tfl.evaluate(files["int8"], (x, one_hot))["accuracy"] == pytest.approx(expected)
    r = tfl.evaluate(files["int8"], {"image": x[:50], "label": y[:50]}, max_samples=20)
    assert r["num_samples"] == 20


def test_evaluate_float_model_matches_keras_accuracy(files, trained_net, mnist):
    _, (x, y) = mnist
    keras_acc = float(np.mean(trained_net.predict(x, verbose=0).argmax(-1) == y))
    assert tfl.evaluate(files["float32"], (x, y))["accuracy"] == pytest.approx(keras_acc,
                                                                              abs=1e-9)


def test_wrong_input_dtype_is_an_error(files, mnist):
    _, (x, y) = mnist
    with pytest.raises(tfl.InputDtypeError, match="cannot feed"):
        tfl.evaluate(files["float32"], (x.astype(str), y))
    # int8 data already quantized is taken as is
    q = np.clip(np.round(x * 255 - 128), -128, 127).astype(np.int8)
    assert tfl.evaluate(files["int8"], (q, y))["accuracy"] == pytest.approx(
        tfl.evaluate(files["int8"], (x, y))["accuracy"])


def test_integer_pixels_are_quantized_for_an_int8_input(pixel_int8, mnist):
    """uint8 images (what tfkd.data's loaders return) feed an int8 file, as any pixel dtype."""
    from ai_edge_litert.interpreter import Interpreter

    path, model = pixel_int8
    _, (x, y) = mnist
    pixels = np.round(x * 255)
    # Independent of tfkd: quantize the pixels by hand and run the interpreter.
    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    scale, zp = inp["quantization"]
    assert inp["dtype"] == np.int8 and scale == pytest.approx(1.0, rel=0.05)
    preds = []
    for sample in pixels:
        it.set_tensor(inp["index"], np.clip(np.round(sample / scale + zp), -128, 127)
                      .astype(np.int8)[None])
        it.invoke()
        preds.append(it.get_tensor(out["index"])[0].argmax())
    expected = float(np.mean(np.asarray(preds) == y))
    assert expected > 0.5  # the model works on pixels: the check below is not vacuous
    for dtype in ("uint8", "float32", "int64", "uint16"):
        result = tfl.evaluate(path, (pixels.astype(dtype), y))
        assert result["accuracy"] == pytest.approx(expected, abs=1e-9), dtype
    # parity casts the same way for the Keras model: uint8 and float pixels agree exactly.
    from_uint8 = tfl.parity(model, path, pixels.astype("uint8"), max_samples=100)
    assert from_uint8 == tfl.parity(model, path, pixels.astype("float32"), max_samples=100)
    assert from_uint8["top1_agreement"] >= 0.9 and from_uint8["mean_lsb"] < 2


def test_parity_with_a_model_of_another_width_names_both(files, mnist):
    import keras

    _, (x, _) = mnist
    other = keras.Sequential([keras.Input((14, 14, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(7)])
    with pytest.raises(tfl.TFLiteError, match=r"width 7\).*\(width 10\)"):
        tfl.parity(other, files["float32"], x, max_samples=5)


def test_wrong_shape_and_missing_labels(files, mnist):
    _, (x, y) = mnist
    with pytest.raises(tfl.RepresentativeDataError, match="does not fit"):
        tfl.evaluate(files["float32"], (x[:, :10], y))
    with pytest.raises(tfl.RepresentativeDataError, match="needs labels"):
        tfl.evaluate(files["float32"], x)
    with pytest.raises(tfl.EmptyDataError):
        tfl.evaluate(files["float32"], (x[:0], y[:0]))


def test_parity_float_model_is_exact(files, trained_net, mnist):
    _, (x, _) = mnist
    r = tfl.parity(trained_net, files["float32"], x, max_samples=50)
    assert r["num_samples"] == 50
    assert r["top1_agreement"] == 1.0
    assert r["max_abs_error"] < 1e-4
    assert r["mean_lsb"] is None and r["output_scale"] is None


def test_parity_int8_reports_lsb(files, trained_net, mnist):
    _, (x, _) = mnist
    r = tfl.parity(trained_net, files["int8"], x, max_samples=100)
    scale = tfl.inspect(files["int8"]).outputs[0].scale
    assert r["output_scale"] == pytest.approx(scale)
    assert r["mean_lsb"] == pytest.approx(r["mean_abs_error"] / scale)
    assert 0 < r["mean_lsb"] <= r["max_lsb"]


def test_benchmark_measures_size_and_latency(files):
    r = tfl.benchmark(files["int8"], num_threads=(1, 2), warmup=2, runs=10)
    assert r["size_bytes"] == os.path.getsize(files["int8"])
    assert set(r["latency_ms"]) == {1, 2}
    for stats in r["latency_ms"].values():
        assert 0 < stats["min"] <= stats["p50"] <= stats["p90"]


def test_data_sources_reduce_to_single_samples():
    import tensorflow as tf

    x = np.arange(6 * 4 * 4, dtype="float32").reshape(6, 4, 4)  # channel axis missing
    y = np.arange(6)
    shape = (4, 4, 1)

    def check(source, n=6, labels=True):
        samples = take_samples(source, shape)
        assert len(samples) == n
        assert all(s.shape == shape for s, _ in samples)
        np.testing.assert_array_equal(samples[-1][0][..., 0], x[n - 1])
        if labels:
            assert [int(t) for _, t in samples] == list(range(n))

    check(x, labels=False)
    check((x, y))
    check((x, y, np.ones(6)))
    check({"image": x, "label": y})
    check(tf.data.Dataset.from_tensor_slices((x, y)))  # unbatched
    check(tf.data.Dataset.from_tensor_slices((x, y)).batch(4))  # ragged last batch
    check(tf.data.Dataset.from_tensor_slices({"image": x, "label": y}).batch(2))
    check(((x[i], y[i]) for i in range(6)))  # generator of single samples
    check(lambda: iter([(x[:3], y[:3]), (x[3:], y[3:])]))  # callable returning batches
    assert len(take_samples(x, shape, max_samples=4)) == 4
    with pytest.raises(tfl.RepresentativeDataError, match="keys"):
        take_samples({"a": x, "b": y}, shape)
