"""The segmentation recipe end to end on a handful of real CamVid images, and its bad input."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json
import subprocess
import sys

import numpy as np
import pytest

from shared_paths import REPO, SHARED_DATA

sys.path.insert(0, str(REPO))
if getattr(sys.modules.get("recipes"), "__file__", "") is None:
    del sys.modules["recipes"]
from recipes import config as rconfig  # noqa: E402
from recipes import flow  # noqa: E402
from recipes import segmentation  # noqa: E402

CAMVID = SHARED_DATA / "camvid.npz"
pytestmark = pytest.mark.skipif(not CAMVID.is_file(), reason="needs ../shared/data/camvid.npz")


def tiny(tmp_path, **kw):
    base = dict(data=str(CAMVID), max_train=16, max_test=8, epochs=1, teacher_epochs=1,
                batch_size=8, teacher_arch="lraspp_mobile", teacher_width=0.5,
                student="lraspp_mobile", student_width=0.5, knowledge="pixel_kd,cwd",
                temperature=1.0, qat_epochs=1, baseline=True, latency=False, verbose=0,
                augment=True, output_dir=str(tmp_path / "out"))
    base.update(kw)
    return rconfig.Config(**base)


def test_recipe_runs_to_an_int8_file_and_a_report_with_pictures(tmp_path):
    cfg = tiny(tmp_path)
    metrics = flow.run(cfg, segmentation.SegmentationTask())
    out = tmp_path / "out"
    rows = {r["model"]: r for r in metrics["rows"]}
    assert list(rows) == ["teacher", "student alone", "distilled student",
                          "QAT student (Keras)", "int8 student (.tflite)"]
    for name, r in rows.items():
        assert 0.0 <= r["miou"] <= 1.0 and 0.0 <= r["pixel_accuracy"] <= 1.0, name
        assert len(r["iou"]) == 11 and list(r["iou"])[:2] == ["Sky", "Building"], name
    assert rows["int8 student (.tflite)"]["fully_int8"] is True
    # The int8 file is scored like the QAT Keras model it came from: nearly the same mIoU.
    assert abs(rows["int8 student (.tflite)"]["miou"] - rows["QAT student (Keras)"]["miou"]) \
        < 0.05
    report = (out / "report.md").read_text()
    assert "| model | miou | pixel_accuracy |" in report
    assert "iou per entry:" in report and "| model | Sky | Building |" in report
    assert report.count("| int8 student (.tflite) |") == 2  # in both tables
    assert (out / "predictions.png").stat().st_size > 10_000
    assert "(predictions.png)" in report and (out / "plot.png").is_file()
    assert (out / "student_int8.tflite").is_file()
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["headline"] == "miou" and saved["task"] == "segmentation"
    # The default target: MediaPipe's ImageSegmenter runs the file on the CamVid test images
    # (its softmax from the metadata) and agrees with LiteRT pixel for pixel.
    client = metrics["artifacts"]["mediapipe"]
    if isinstance(client, dict):  # a dict when mediapipe is installed (.[all] has it)
        assert client["kind"] == "segmenter" and client["num_images"] == 8
        assert client["pixel_agreement"] >= 0.99 and client["confidence_max_abs_diff"] < 1e-4
        assert "MediaPipe Tasks (segmenter" in report


def test_pixel_terms_get_the_ignore_label_of_the_data():
    import tfkd.knowledge as K
    from tfkd import data

    task = segmentation.SegmentationTask()
    splits = data.Splits(train=(None, None), test=(None, None), class_names=["a", "b"],
                         ignore_label=11)
    terms = task.adapt_knowledge([K.PixelSoftTargets(temperature=2.0),
                                  K.PixelSoftTargets(ignore_label=3), K.ChannelWiseKD()], splits)
    assert [getattr(t, "ignore_label", None) for t in terms] == [11, 3, None]
    assert terms[0].temperature == 2.0 and terms[0].requires_labels


def test_classification_students_are_refused(tmp_path):
    with pytest.raises(rconfig.RecipeError, match="not a segmentation student"):
        flow.run(tiny(tmp_path, student="mobile_cnn"), segmentation.SegmentationTask())


def test_data_that_is_not_segmentation_is_refused_before_training(tmp_path):
    from tfkd import data

    with pytest.raises(data.DataError, match="neither an .npz"):
        flow.run(tiny(tmp_path, data=str(tmp_path / "nothing.txt")),
                 segmentation.SegmentationTask())


def test_a_teacher_of_another_class_count_is_refused(tmp_path):
    import keras

    from tfkd import data

    bad = keras.Sequential([keras.Input((90, 120, 3)), keras.layers.Conv2D(5, 1)])
    path = tmp_path / "t.keras"
    bad.save(path)
    with pytest.raises(data.DataError, match="5"):
        flow.run(tiny(tmp_path, teacher=str(path)), segmentation.SegmentationTask())


def test_colorize_paints_void_black():
    colors = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 0]], np.uint8)
    rgb = segmentation.colorize(np.array([[0, 1, 11]]), colors, ignore_label=11)
    assert rgb.tolist() == [[[255, 0, 0], [0, 255, 0], [0, 0, 0]]]


def test_helpfull_lists_the_segmentation_defaults():
    proc = subprocess.run([sys.executable, "-m", "recipes.segmentation", "--helpfull"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    assert "camvid.npz" in proc.stdout and "lraspp_mobile" in proc.stdout
    assert "pixel_kd" in proc.stdout
