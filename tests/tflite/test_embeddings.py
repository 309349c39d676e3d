"""Embedding models (faces, re-identification) through tfkd.tflite: conversion to an int8
L2_NORMALIZATION, `embeddings`, the embedding metrics of `evaluate`, `parity`, the
embedder metadata, and MediaPipe's ImageEmbedder running the file.

One tiny model (three strided convs, Dense 64, `tfl.L2Normalization`, 56x46 RGB pixels in
[0, 255]) on synthetic identities (a smooth pattern per identity, noise and brightness per
image), converted twice per session: int8 for MediaPipe (uint8 in / out) and float32.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("sklearn")

import tfkd.tflite as tfl  # noqa: E402

L = keras.layers
H, W = 56, 46
IDS, PER = 8, 5


def _identities(seed=0, ids=IDS, per=PER):
    """(uint8 images (ids * per, H, W, 3), identities): a low-frequency pattern per identity,
    upsampled, plus noise and a brightness shift per image."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(40, 215, (ids, 7, 6, 3))
    base = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)[:, :H, :W]
    y = np.repeat(np.arange(ids), per)
    x = base[y] + rng.normal(0, 30, (len(y), H, W, 3)) + rng.normal(0, 20, (len(y), 1, 1, 1))
    return np.clip(np.round(x), 0, 255).astype(np.uint8), y


def _net(normalization="l2"):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((H, W, 3), name="pixels")
    x = L.Rescaling(1 / 255.0)(inputs)
    for filters in (8, 16, 16):
        x = L.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
    x = L.Dense(64)(L.Flatten()(x))
    norm = tfl.L2Normalization() if normalization == "l2" else L.UnitNormalization()
    return keras.Model(inputs, norm(x), name="face_net")


@pytest.fixture(scope="module")
def faces():
    return _identities()


@pytest.fixture(scope="module")
def calibration(faces):
    x, _ = faces
    # Real images span 0-255; these synthetic ones get a black and a white frame.
    return np.concatenate([x, np.zeros((1, H, W, 3)), np.full((1, H, W, 3), 255.0)]
                          ).astype("float32")


@pytest.fixture(scope="module")
def model():
    return _net()


@pytest.fixture(scope="module")
def converted(model, calibration, tmp_path_factory):
    folder = tmp_path_factory.mktemp("embeddings")
    out = {"int8": str(folder / "face_int8.tflite"), "float32": str(folder / "face_f32.tflite")}
    out["int8_report"] = tfl.convert(model, out["int8"], quantization="int8",
                                     representative_data=calibration, target="mediapipe",
                                     output_meaning="embedding")
    out["float32_report"] = tfl.convert(model, out["float32"], target="mediapipe",
                                        output_meaning="embedding")
    return out


def _cos(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def test_l2_normalization_is_one_int8_op_and_unit_normalization_is_refused(
        converted, calibration, tmp_path):
    report = converted["int8_report"]
    assert report.is_fully_int8 and "L2_NORMALIZATION" in report.op_counts
    assert (report.inputs[0].dtype, report.outputs[0].dtype) == ("uint8", "uint8")
    assert (report.inputs[0].scale, report.inputs[0].zero_point) == (1.0, 0)  # raw pixels
    assert report.outputs[0].scale == pytest.approx(1 / 128)  # TFLite's fixed L2 scale
    assert "L2_NORMALIZATION" in converted["float32_report"].op_counts
    path = tmp_path / "unit.tflite"
    with pytest.raises(tfl.QuantizationVerificationError,
                       match=r"UnitNormalization .*tfkd\.tflite\.L2Normalization"):
        tfl.convert(_net("unit"), path, quantization="int8", representative_data=calibration,
                    output_meaning="embedding")
    assert not path.exists()
    # The layer serialises and computes what UnitNormalization does.
    x = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
    layer = tfl.L2Normalization.from_config(tfl.L2Normalization(epsilon=1e-10).get_config())
    np.testing.assert_allclose(layer(x), L.UnitNormalization()(x), atol=1e-6)


def test_embeddings_of_the_keras_model_and_its_files(model, converted, faces):
    x, _ = faces
    keras_emb = tfl.embeddings(model, x, batch_size=16)
    np.testing.assert_allclose(keras_emb, model.predict(x.astype("float32"), verbose=0),
                               atol=1e-5)
    assert keras_emb.shape == (len(x), 64) and keras_emb.dtype == np.float32
    f32 = tfl.embeddings(converted["float32"], x)
    np.testing.assert_allclose(f32, keras_emb, atol=1e-4)
    int8 = tfl.embeddings(converted["int8"], (x, np.zeros(len(x))), max_samples=20)
    assert int8.shape == (20, 64) and int8.dtype == np.float32  # dequantized uint8
    assert np.allclose(np.linalg.norm(int8, axis=1), 1.0, atol=0.05)
    assert _cos(int8, keras_emb[:20]).min() >= 0.98
    with pytest.raises(tfl.TFLiteError, match="not an embedding"):
        seg = keras.Sequential([keras.Input((H, W, 3)), L.Conv2D(2, 1)])
        tfl.embeddings(seg, x[:2])


def test_evaluate_scores_keras_and_tflite_alike(model, converted, faces):
    x, y = faces
    names = ("roc_auc", "tar@far=0.01", "tar@far=0.1", "verification_accuracy",
             "verification_threshold", "rank1")
    keras_r = tfl.evaluate(model, (x, y), metrics=names)
    v = tfl.verification(tfl.embeddings(model, x), y)
    assert keras_r["roc_auc"] == v["roc_auc"] and keras_r["tar@far=0.1"] == v["tar@far=0.1"]
    assert keras_r["verification_accuracy"] == v["accuracy"]
    assert keras_r["verification_threshold"] == v["threshold"]
    assert keras_r.runtime == "keras" and keras_r["num_samples"] == len(x)
    assert keras_r["num_probes"] == len(x)  # leave-one-out: every identity has 5 images
    assert keras_r["roc_auc"] > 0.9 and keras_r["rank1"] > 0.9  # the identities separate
    for kind in ("int8", "float32"):
        r = tfl.evaluate(converted[kind], (x, y), metrics=names)
        assert sorted(r) == sorted(names + ("num_samples", "num_probes"))
        assert r.runtime in ("compiled_model", "interpreter")
        assert abs(r["roc_auc"] - keras_r["roc_auc"]) < 0.02
        assert abs(r["rank1"] - keras_r["rank1"]) <= 0.05
    # A gallery (one image per identity) and the rest as probes; rank5 of 8 identities.
    first = np.arange(len(x)) % PER == 0
    r = tfl.evaluate(converted["int8"], (x[~first], y[~first]), metrics=("rank1", "rank5"),
                     gallery=(x[first], y[first]))
    emb = tfl.embeddings(converted["int8"], x)
    ref = tfl.identification(emb[first], y[first], emb[~first], y[~first], ranks=(1, 5))
    assert r["rank1"] == ref["rank1"] and r["rank5"] == ref["rank5"]
    assert r["num_probes"] == int((~first).sum())


def test_evaluate_embedding_errors_name_the_fix(model, converted, faces):
    x, y = faces
    with pytest.raises(tfl.TFLiteError, match="outputs embeddings .*'roc_auc'"):
        tfl.evaluate(converted["int8"], (x, y))  # default metrics=("accuracy",)
    with pytest.raises(tfl.TFLiteError, match="in a call of their own"):
        tfl.evaluate(converted["int8"], (x, y), metrics=("roc_auc", "accuracy"))
    with pytest.raises(tfl.RepresentativeDataError, match="identity labels"):
        tfl.evaluate(converted["int8"], x, metrics=("roc_auc",))
    with pytest.raises(tfl.TFLiteError, match="gallery= is the enrolled set"):
        tfl.evaluate(model, (x, y), metrics=("roc_auc",), gallery=(x, y))
    with pytest.raises(tfl.TFLiteError, match="gallery= and pairs= apply"):
        tfl.evaluate(converted["int8"], (x, y), metrics=("accuracy",), pairs=[[0, 1]])
    with pytest.raises(tfl.TFLiteError, match="use model.evaluate"):
        tfl.evaluate(model, (x, y), metrics=("accuracy",))
    with pytest.raises(tfl.TFLiteError, match="do not apply"):
        tfl.evaluate(model, (x, y), metrics=("rank1",), ignore_class=0)
    with pytest.raises(tfl.RepresentativeDataError, match="at least 2 identities"):
        tfl.evaluate(model, (x[:5], y[:5]), metrics=("roc_auc",))


def test_parity_reports_cosine_and_decision_agreement(model, converted, faces):
    x, y = faces
    r = tfl.parity(model, converted["int8"], (x, y))
    keras_v = tfl.verification(tfl.embeddings(model, x), y, far=(0.1,))
    assert r["num_samples"] == len(x) and r["top1_agreement"] is None
    assert r["min_cosine"] >= 0.98 and r["mean_cosine"] >= r["min_cosine"]
    assert r["threshold_source"] == "keras_balanced_accuracy"
    assert r["threshold"] == pytest.approx(keras_v["balanced_threshold"])
    assert r["decision_agreement"] >= 0.95
    assert r["keras_tar@far=0.1"] == keras_v["tar@far=0.1"]
    assert abs(r["file_tar@far=0.1"] - r["keras_tar@far=0.1"]) <= 0.1
    assert r["output_scale"] == pytest.approx(1 / 128) and r["mean_lsb"] < 2
    # No labels: decisions at the given threshold, no TAR.
    r = tfl.parity(model, converted["float32"], x, threshold=0.5)
    assert r["threshold_source"] == "given" and r["decision_agreement"] == 1.0
    assert r["keras_tar@far=0.1"] is None and r["min_cosine"] > 0.9999
    # Without metadata the unit-norm outputs still say "embedding"; embedding=False not.
    plain = converted["float32"] + ".plain.tflite"
    tfl.convert(model, plain)
    assert tfl.parity(model, plain, x[:6])["mean_cosine"] > 0.9999
    assert "mean_cosine" not in tfl.parity(model, plain, x[:6], embedding=False)


def test_embedder_metadata(converted, tmp_path):
    for kind in ("int8", "float32"):
        meta = tfl.read_metadata(converted[kind])
        assert meta["kind"] == "embedder" and meta["output_meaning"] == "embedding"
        assert meta["outputs"] == ["embedding"] and meta["input"]["color_space"] == "RGB"
    # A float input needs MediaPipe's NormalizationOptions: raw pixels, the model rescales.
    assert tfl.read_metadata(converted["float32"])["input"]["normalization"] == \
        {"mean": [0.0], "std": [1.0]}
    fmap = keras.Sequential([keras.Input((H, W, 3)), L.Conv2D(4, 3, strides=4)])
    with pytest.raises(tfl.ConversionError, match=r"output \(1, D\)"):
        tfl.convert(fmap, tmp_path / "fmap.tflite", output_meaning="embedding")


mp = pytest.importorskip("mediapipe")


@pytest.mark.parametrize("kind", ["int8", "float32"])
def test_mediapipe_image_embedder_returns_the_files_embeddings(model, converted, faces, kind):
    x, _ = faces
    ours = tfl.mediapipe_embeddings(converted[kind], x)
    litert = tfl.embeddings(converted[kind], x)
    keras_emb = tfl.embeddings(model, x)
    assert ours.shape == (len(x), 64)
    assert _cos(ours, litert).min() >= 0.99
    assert _cos(ours, keras_emb).min() >= (0.98 if kind == "int8" else 0.9999)
    result = tfl.mediapipe_agreement(converted[kind], x[:6])
    assert result["kind"] == "embedder" and result["min_cosine"] >= 0.99


def test_mediapipe_refuses_a_grayscale_embedder(tmp_path):
    from mediapipe.tasks.python import BaseOptions, vision

    gray = keras.Sequential([keras.Input((H, W, 1)), L.Rescaling(1 / 255.0),
                             L.Conv2D(4, 3, strides=4), L.Flatten(), L.Dense(8),
                             tfl.L2Normalization()])
    path = str(tmp_path / "gray.tflite")
    tfl.convert(gray, path, target="mediapipe", output_meaning="embedding")
    options = vision.ImageEmbedderOptions(base_options=BaseOptions(model_asset_path=path))
    with pytest.raises(ValueError, match="Only RGB color space is supported"):
        vision.ImageEmbedder.create_from_options(options)
    with pytest.raises(tfl.TFLiteError, match="3-channel"):
        tfl.mediapipe_embeddings(path, np.zeros((1, H, W, 1), np.uint8))
