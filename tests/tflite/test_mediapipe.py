"""The exported files in the real client: MediaPipe Tasks (the C++ task graphs an Android app
runs, through their Python API), against LiteRT on the same file and images.

The demo's file on the CIFAR-10 sample is checked in tests/recipes/test_demo.py; the
segmentation and detection recipes' files in their recipe tests.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

import tfkd
import tfkd.students
import tfkd.tflite as tfl
from tfkd.tflite.evaluate import run_on_data

mp = pytest.importorskip("mediapipe")
from mediapipe.tasks.python import BaseOptions, vision  # noqa: E402

L = keras.layers
SIZE = 32


@pytest.fixture(scope="module")
def images():
    x = np.random.default_rng(1).integers(0, 256, (20, SIZE, SIZE, 3)).astype("uint8")
    x[0], x[1] = 0, 255
    return x


def _classifier():
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((SIZE, SIZE, 3)), L.Rescaling(1 / 255.0),
                            L.Conv2D(8, 3, strides=2, activation="relu"),
                            L.GlobalAveragePooling2D(), L.Dense(5)], name="clf")
    return tfkd.students.with_activation(net, "softmax")


@pytest.mark.parametrize("quantization", ["int8", "float32"])
def test_image_classifier_returns_the_files_labels_and_litert_top1(tmp_path, images,
                                                                   quantization):
    labels = ["airplane", "automobile", "bird", "cat", "deer"]
    path = str(tmp_path / f"clf_{quantization}.tflite")
    tfl.convert(_classifier(), path, quantization=quantization,
                representative_data=images.astype("float32"), target="mediapipe",
                labels=labels)
    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=path))
    got = []
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for image in images:
            result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB,
                                                  data=np.ascontiguousarray(image)))
            got.append(result.classifications[0].categories)
    _, probs, _ = run_on_data(path, images)
    assert [c[0].category_name for c in got] == [labels[i] for i in probs.argmax(-1)]
    # Scores are the file's probabilities (dequantized uint8 or float), for every class.
    mp_scores = np.array([[next(c.score for c in cats if c.category_name == name)
                           for name in labels] for cats in got])
    np.testing.assert_allclose(mp_scores, probs, atol=1e-6)
    assert tfl.mediapipe_agreement(path, images)["top1_agreement"] == 1.0


def test_image_segmenter_applies_the_metadatas_softmax(tmp_path, images):
    keras.utils.set_random_seed(0)
    seg = keras.Sequential([keras.Input((SIZE, SIZE, 3)), L.Rescaling(1 / 255.0),
                            L.Conv2D(8, 3, padding="same", activation="relu"),
                            L.Conv2D(4, 1)], name="seg")
    path = tmp_path / "seg.tflite"
    tfl.convert(seg, path, quantization="int8", representative_data=images.astype("float32"),
                target="mediapipe", labels=["sky", "road", "car", "void"],
                output_meaning="logits")
    result = tfl.mediapipe_agreement(path, images)
    assert result["kind"] == "segmenter"
    assert result["pixel_agreement"] >= 0.99
    assert result["confidence_max_abs_diff"] < 1e-5  # MediaPipe's softmax of the same logits
    masks = tfl.mediapipe_outputs(path, images[:2])
    assert masks[0]["category_mask"].shape == (SIZE, SIZE)
    assert masks[0]["confidence"].shape == (SIZE, SIZE, 4)


def test_object_detector_reads_boxes_classes_scores_by_the_metadata(tmp_path):
    from tfkd.students.detection import export_model, ssd_mobile

    size = 64
    anchors = tfkd.Anchors((size, size))
    keras.utils.set_random_seed(0)
    net = ssd_mobile((size, size, 3), num_classes=2, width=0.25, anchors=anchors)
    x = np.random.default_rng(0).integers(0, 256, (12, size, size, 3)).astype("uint8")
    x[0], x[1] = 0, 255
    path = tmp_path / "det.tflite"
    tfl.convert(export_model(net, anchors, max_detections=8, score_threshold=0.001), path,
                quantization="int8", representative_data=x.astype("float32"),
                target="mediapipe", labels=["raccoon", "person"])
    result = tfl.mediapipe_agreement(path, x)
    assert result["kind"] == "detector" and result["num_detections"] > 0
    # Every LiteRT detection is among MediaPipe's (class name, score, pixel box), MediaPipe
    # invents none, and every image returns as many boxes as expected once the ones MediaPipe
    # drops are counted out: this untrained detector's boxes leave the image, and MediaPipe
    # drops one whose clipped rectangle repeats a higher-scoring one's.
    assert result["detection_agreement"] == 1.0 and result["mediapipe_matched"] == 1.0
    assert result["count_agreement"] == 1.0
    dets = tfl.mediapipe_outputs(path, x[:1])[0]
    assert {d["name"] for d in dets} <= {"raccoon", "person"}


def test_image_embedder_returns_the_files_embedding(tmp_path, images):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    h = L.Conv2D(8, 3, activation="relu")(L.Rescaling(1 / 255.0)(inputs))
    emb = L.UnitNormalization()(L.Dense(16)(L.GlobalAveragePooling2D()(h)))
    path = tmp_path / "emb.tflite"
    tfl.convert(keras.Model(inputs, emb), path, target="mediapipe", output_meaning="embedding")
    result = tfl.mediapipe_agreement(path, images[2:])  # [0] is black: a zero embedding
    assert result["kind"] == "embedder" and result["mean_cosine"] > 0.9999


def test_a_file_without_metadata_is_refused_with_the_fix(tmp_path, images):
    path = tmp_path / "plain.tflite"
    tfl.convert(_classifier(), path)
    with pytest.raises(tfl.TFLiteError, match="target='mediapipe'"):
        tfl.mediapipe_agreement(path, images)
    with pytest.raises(tfl.TFLiteError, match="at the model's size"):
        tfl.mediapipe_agreement(path, images[:, :16, :16])
