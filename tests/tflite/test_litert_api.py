"""LiteRT's CompiledModel API beside the Interpreter: the same outputs, bit for bit, on a float
and an int8 classifier and a tiny detector; which runtime ran is reported; dynamic shapes fall
back to the Interpreter."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tfkd.tflite as tfl  # noqa: E402
from tfkd.tflite.evaluate import DetectionRunner, Runner, run_on_data  # noqa: E402


def _classifier():
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(5)(x))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import keras

    d = tmp_path_factory.mktemp("litert")
    rng = np.random.default_rng(0)
    x = rng.random((40, 8, 8, 1)).astype("float32")
    net = _classifier()
    out = {"x": x, "net": net}
    for name, kwargs in {
            "float": {},
            "int8": {"quantization": "int8", "input_type": "uint8", "representative_data": x},
            "dynamic": {"batch_size": None}}.items():
        out[name] = d / f"{name}.tflite"
        tfl.convert(net, out[name], **kwargs)
    # A toy detector, as in tfl.detections' docstring: 4 anchors, 2 classes.
    anchors = np.array([[0.25, 0.25, 0.5, 0.5], [0.25, 0.75, 0.5, 0.5],
                        [0.75, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5]], "float32")
    image = keras.Input((8, 8, 3), batch_size=1)
    f = keras.layers.Flatten()(keras.layers.AveragePooling2D(4)(image))
    box = keras.layers.Reshape((4, 4))(keras.layers.Dense(16)(f))
    score = keras.layers.Reshape((4, 2))(keras.layers.Dense(8, "sigmoid")(f))
    post = tfl.DetectionPostProcess(anchors, num_classes=2, max_detections=5)
    out["detector"] = d / "det.tflite"
    tfl.convert(keras.Model(image, post([box, score])), out["detector"])
    out["images"] = rng.random((6, 8, 8, 3)).astype("float32")
    return out


@pytest.mark.parametrize("name", ["float", "int8"])
def test_compiled_model_outputs_equal_the_interpreters(files, name):
    compiled = Runner(files[name], runtime="compiled_model")
    interp = Runner(files[name], runtime="interpreter")
    assert (compiled.runtime, interp.runtime) == ("compiled_model", "interpreter")
    assert Runner(files[name]).runtime == "compiled_model"  # "auto" picks it
    x = files["x"][:20]
    _, a, _ = run_on_data(compiled, x)
    _, b, _ = run_on_data(interp, x)
    assert np.array_equal(a, b)
    # The raw (still quantized) outputs too, sample by sample.
    i = compiled.output["index"]
    for sample in x[:5]:
        compiled.invoke(sample)
        interp.invoke(sample)
        ra, rb = compiled.get(i), interp.get(i)
        assert ra.dtype == rb.dtype and np.array_equal(ra, rb)


def test_compiled_model_detections_equal_the_interpreters(files):
    a = tfl.detections(files["detector"], files["images"], runtime="compiled_model", clip=False)
    b = tfl.detections(files["detector"], files["images"], runtime="interpreter", clip=False)
    assert all(np.array_equal(a[k], b[k]) for k in ("boxes", "classes", "scores", "count"))
    assert a["count"].sum() > 0
    assert DetectionRunner(files["detector"]).runtime == "compiled_model"


def test_evaluate_reports_the_runtime(files):
    x = files["x"][:10]
    y = np.argmax(files["net"].predict(x, verbose=0), -1)
    results = {rt: tfl.evaluate(files["float"], (x, y), runtime=rt)
               for rt in ("auto", "compiled_model", "interpreter")}
    assert [r.runtime for r in results.values()] == \
        ["compiled_model", "compiled_model", "interpreter"]
    assert all(sorted(r) == ["accuracy", "num_samples"] for r in results.values())
    assert len({r["accuracy"] for r in results.values()}) == 1
    assert results["auto"].fallback_reason is None
    boxes = np.tile([[[0.0, 0.0, 0.5, 0.5]]], (6, 1, 1))
    data = (files["images"], {"boxes": boxes, "classes": np.zeros((6, 1))})
    det = {rt: tfl.evaluate(files["detector"], data, metrics=("map50",), runtime=rt)
           for rt in ("compiled_model", "interpreter")}
    assert det["compiled_model"].runtime == "compiled_model"
    assert det["interpreter"].runtime == "interpreter"
    assert det["compiled_model"]["map50"] == det["interpreter"]["map50"]
    with pytest.raises(tfl.TFLiteError, match="runtime="):
        tfl.evaluate(files["float"], (x, y), runtime="gpu")


def test_dynamic_batch_falls_back_to_the_interpreter(files):
    runner = Runner(files["dynamic"])
    assert runner.runtime == "interpreter" and "dynamic shape" in runner.fallback_reason
    x = files["x"][:10]
    _, outputs, _ = run_on_data(runner, x)
    _, expected, _ = run_on_data(Runner(files["float"], runtime="compiled_model"), x)
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs, files["net"].predict(x, verbose=0), atol=1e-4)
    y = np.argmax(expected, -1)
    r = tfl.evaluate(files["dynamic"], (x, y))
    assert r.runtime == "interpreter" and r["accuracy"] == 1.0
    with pytest.raises(tfl.TFLiteError, match="CompiledModel cannot run"):
        Runner(files["dynamic"], runtime="compiled_model")


def test_benchmark_with_both_runtimes(files):
    for path in (files["int8"], files["detector"]):
        for rt in ("compiled_model", "interpreter"):
            r = tfl.benchmark(path, num_threads=(1,), warmup=2, runs=5, runtime=rt)
            assert r["runtime"] == rt and r["fallback_reason"] is None
            assert 0 < r["latency_ms"][1]["min"] <= r["latency_ms"][1]["p50"]
    assert tfl.benchmark(files["int8"], num_threads=1, runs=3)["runtime"] == "compiled_model"
    r = tfl.benchmark(files["dynamic"], num_threads=1, runs=3)
    assert r["runtime"] == "interpreter" and "dynamic shape" in r["fallback_reason"]
