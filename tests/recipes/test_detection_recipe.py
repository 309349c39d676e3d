"""The detection recipe end to end on a handful of real raccoon images, and its bad input."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json
import sys

import numpy as np
import pytest

from shared_paths import REPO, SHARED_DATA

sys.path.insert(0, str(REPO))
if getattr(sys.modules.get("recipes"), "__file__", "") is None:
    del sys.modules["recipes"]
from recipes import config as rconfig  # noqa: E402
from recipes import detection  # noqa: E402
from recipes import flow  # noqa: E402

RACCOON = SHARED_DATA / "raccoon"
pytestmark = pytest.mark.skipif(not (RACCOON / "annotations.json").is_file(),
                                reason="needs ../shared/data/raccoon")


def tiny(tmp_path, **kw):
    base = dict(data=str(RACCOON), image_size=64, max_train=16, max_test=6, epochs=1,
                teacher_epochs=1, batch_size=8, teacher_arch="ssd_mobile", teacher_width=0.5,
                student="ssd_mobile", student_width=0.25,
                knowledge="detection_soft_targets,foreground_imitation", temperature=1.0,
                qat_epochs=1, baseline=False, latency=False, verbose=0, augment=True,
                output_dir=str(tmp_path / "out"))
    base.update(kw)
    return rconfig.Config(**base)


def test_recipe_runs_to_a_post_processed_int8_file_and_a_report(tmp_path):
    cfg = tiny(tmp_path)
    metrics = flow.run(cfg, detection.DetectionTask(strides=(16, 32), max_detections=10))
    out = tmp_path / "out"
    rows = {r["model"]: r for r in metrics["rows"]}
    # (No student alone: the flow's baseline row is the classification recipes' code path,
    # tested there; leaving it out keeps this test's training to three tiny models.)
    assert list(rows) == ["teacher", "distilled student", "QAT student (Keras)",
                          "int8 student (.tflite)"]
    for name, r in rows.items():
        assert 0.0 <= r["map"] <= r["map50"] <= 1.0, name
    ops = metrics["artifacts"]["tflite_ops"]
    assert ops.get("TFLite_Detection_PostProcess") == 1 and "CONV_2D" in ops
    # Every network op maps; the DEQUANTIZEs and the post-process run on the CPU by design.
    assert metrics["artifacts"]["edgetpu_compatible"] is True
    report = (out / "report.md").read_text()
    assert "| model | map50 | map |" in report
    assert (out / "detections.png").stat().st_size > 10_000 and "(detections.png)" in report
    assert (out / "student_int8.tflite").is_file()
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["headline"] == "map50" and saved["task"] == "detection"
    # The default target: MediaPipe's ObjectDetector runs the file on the raccoon test images
    # and returns LiteRT's detections (class name "raccoon", score, pixel box).
    client = metrics["artifacts"]["mediapipe"]
    if isinstance(client, dict):  # a dict when mediapipe is installed (.[all] has it)
        assert client["kind"] == "detector" and client["num_images"] == 6
        assert client["detection_agreement"] >= 0.99 and client["mediapipe_matched"] == 1.0
        # MediaPipe drops a box whose clipped whole-pixel rectangle repeats a higher-scoring
        # one's (this 1-epoch detector's boxes leave the image); all others come back.
        assert client["count_agreement"] == 1.0
        assert "MediaPipe Tasks (detector" in report


def test_box_terms_get_the_recipes_anchors():
    import tfkd
    import tfkd.knowledge as K

    task = detection.DetectionTask(strides=(16, 32))
    task.anchors = tfkd.Anchors(image_size=(64, 64), strides=(16, 32))
    terms = task.adapt_knowledge([K.get("foreground_imitation"),
                                  K.get("detection_soft_targets")], None)
    assert terms[0].get_config()["anchors"] == task.anchors.get_config()
    assert tuple(terms[0].get_config()["student_layers"]) == ("p4", "p5")


def test_segmentation_students_are_refused(tmp_path):
    with pytest.raises(rconfig.RecipeError, match="not a detection student"):
        flow.run(tiny(tmp_path, student="lraspp_mobile"), detection.DetectionTask())


def test_a_teacher_with_other_outputs_is_refused_before_training(tmp_path):
    import keras

    from tfkd import data

    bad = keras.Sequential([keras.Input((64, 64, 3)), keras.layers.Conv2D(5, 1)])
    path = tmp_path / "t.keras"
    bad.save(path)
    with pytest.raises(data.DataError, match="class_logits"):
        flow.run(tiny(tmp_path, teacher=str(path)), detection.DetectionTask(strides=(16, 32)))


def test_pack_keeps_padding_rows():
    y = detection.pack(np.zeros((2, 3, 4), "float32"), np.array([[0, -1, -1], [1, 0, -1]]))
    assert y.shape == (2, 3, 5) and y[0, 1, 4] == -1 and y[1, 0, 4] == 1
