"""The super-resolution recipe end to end on a few real T91 patches and Set5 images, and its
bad input."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json
import sys

import pytest

from shared_paths import REPO, SHARED_DATA

sys.path.insert(0, str(REPO))
if getattr(sys.modules.get("recipes"), "__file__", "") is None:
    del sys.modules["recipes"]
from recipes import config as rconfig  # noqa: E402
from recipes import flow  # noqa: E402
from recipes import super_resolution  # noqa: E402

SR = SHARED_DATA / "sr"
pytestmark = pytest.mark.skipif(not (SR / "Set5").is_dir(), reason="needs ../shared/data/sr")


def tiny(tmp_path, **kw):
    base = dict(data=str(SR), image_size=24, max_train=64, max_test=2, epochs=1,
                teacher_epochs=1, batch_size=16, teacher_arch="edsr", teacher_width=0.25,
                student="fsrcnn", student_width=0.5, scale=2,
                knowledge="reconstruction_kd,fakd:student_layer=mapping,teacher_layer=body",
                qat_epochs=1, baseline=True, latency=False, verbose=0, augment=True,
                target="litert", output_dir=str(tmp_path / "out"))
    base.update(kw)
    return rconfig.Config(**base)


def test_recipe_runs_to_an_int8_file_scored_on_full_set5_images(tmp_path):
    metrics = flow.run(tiny(tmp_path), super_resolution.SuperResolutionTask())
    out = tmp_path / "out"
    rows = {r["model"]: r for r in metrics["rows"]}
    assert list(rows) == ["teacher", "bicubic", "student alone", "distilled student",
                          "QAT student (Keras)", "int8 student (.tflite)"]
    # Bicubic on the first two Set5 images (baby, bird) at x2, Y channel, shaved: the
    # published per-image figures are 37.07 and 36.81 dB.
    assert 36.5 < rows["bicubic"]["psnr"] < 37.3 and 0.9 < rows["bicubic"]["ssim"] < 1.0
    # The students learn the residual over bilinear upsampling: even one epoch lands near
    # bicubic, not at a blank image's ~10 dB.
    for name in ("student alone", "distilled student", "QAT student (Keras)"):
        assert rows[name]["psnr"] > 30.0, (name, rows[name])
    # The int8 file scores like the QAT model it came from, on the same full images.
    assert abs(rows["int8 student (.tflite)"]["psnr"] - rows["QAT student (Keras)"]["psnr"]) \
        < 0.5
    # The upsampler and the bilinear skip: both TRANSPOSE_CONV (int8, Edge TPU ops).
    assert metrics["artifacts"]["tflite_ops"].get("TRANSPOSE_CONV") == 2
    report = (out / "report.md").read_text()
    assert "| model | psnr | ssim |" in report
    assert (out / "crops.png").stat().st_size > 10_000 and "(crops.png)" in report
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["headline"] == "psnr" and saved["task"] == "super_resolution"


@pytest.mark.parametrize("change, message", [
    (dict(scale=5), "--scale=5"),
    (dict(image_size=25), "must be a multiple of --scale"),
    (dict(target="mediapipe"), "MediaPipe Tasks has no super-resolution task"),
    (dict(student="mobile_cnn"), "super-resolution student is 'fsrcnn'"),
])
def test_bad_flags_are_refused_before_any_data_is_read(tmp_path, change, message):
    with pytest.raises(rconfig.RecipeError, match=message):
        flow.run(tiny(tmp_path, data="/nonexistent", **change),
                 super_resolution.SuperResolutionTask())


def test_a_folder_without_the_sr_layout_is_refused(tmp_path):
    from tfkd import data

    (tmp_path / "images").mkdir()
    with pytest.raises(data.DataError, match="has no T91 / Set5 folder"):
        flow.run(tiny(tmp_path, data=str(tmp_path / "images")),
                 super_resolution.SuperResolutionTask())


def test_a_teacher_of_another_scale_is_refused_before_training(tmp_path):
    from tfkd import data
    from tfkd.students import super_resolution as sr

    path = tmp_path / "x4.keras"
    sr.edsr(scale=4, filters=8, blocks=1).save(path)
    with pytest.raises(data.DataError, match="must give \\(16, 16, 1\\)"):
        flow.run(tiny(tmp_path, teacher=str(path), max_train=16),
                 super_resolution.SuperResolutionTask())
