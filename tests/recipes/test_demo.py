"""The embedded demo, shortened (`--quick`), run as the README runs it: offline, from the repo."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_quick_demo_distils_exports_int8_and_reports(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-m", "recipes.demo", "--quick",
                           f"--output_dir={out}"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("classification: accuracy: teacher")
    assert str(out / "report.md") in last  # it says where the report is

    metrics = json.loads((out / "metrics.json").read_text())
    rows = {r["model"]: r for r in metrics["rows"]}
    assert set(rows) == {"teacher", "student alone", "distilled student",
                         "int8 student (.tflite)"}
    # The committed teacher copy is the reference ResNet-20: ~89% on the sample's test images.
    assert rows["teacher"]["accuracy"] >= 0.85 and rows["teacher"]["params"] == 274042
    assert metrics["config"]["cache_teacher"] is True  # --quick exercises the cache
    assert rows["distilled student"]["params"] <= 100_000
    int8 = rows["int8 student (.tflite)"]
    assert int8["fully_int8"] is True and int8["latency_ms"] > 0
    assert int8["size_kb"] < 0.5 * rows["distilled student"]["size_kb"]
    # Post-training int8 keeps the distilled student's accuracy (200 test images).
    assert abs(int8["accuracy"] - rows["distilled student"]["accuracy"]) <= 0.05
    assert pathlib.Path(metrics["artifacts"]["tflite"]).is_file()
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "| int8 student (.tflite) |" in report and "plot.png" in report
    assert metrics["artifacts"]["target"] == "mediapipe"
    assert "MediaPipe Tasks (classifier" in report
    _check_in_mediapipe(out / "student_int8.tflite")


def _check_in_mediapipe(path):
    """The demo's file in MediaPipe's ImageClassifier (the client of an Android app), on all
    500 test images of the sample: CIFAR-10 names from the packed labels, and the same top-1
    as tfkd.tflite.evaluate's runner on >= 99% of the images."""
    import numpy as np
    import pytest

    mp = pytest.importorskip("mediapipe")
    from mediapipe.tasks.python import BaseOptions, vision

    import tfkd.tflite as tfl
    from tfkd.tflite.evaluate import run_on_data

    sample = np.load(REPO / "recipes" / "data" / "cifar10_sample.npz")
    names = [str(n) for n in sample["class_names"]]
    x, y = sample["x_test"], sample["y_test"]
    options = vision.ImageClassifierOptions(
        base_options=BaseOptions(model_asset_path=str(path)), max_results=1)
    with vision.ImageClassifier.create_from_options(options) as classifier:
        top = [classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB,
                                            data=np.ascontiguousarray(image)))
               .classifications[0].categories[0].category_name for image in x]
    assert set(top) <= set(names) and len(set(top)) > 1
    _, outputs, _ = run_on_data(str(path), x)
    litert = [names[i] for i in outputs.argmax(-1)]
    assert np.mean([a == b for a, b in zip(top, litert)]) >= 0.99
    mp_accuracy = np.mean([t == names[c] for t, c in zip(top, y)])
    assert abs(mp_accuracy - tfl.evaluate(str(path), (x, y))["accuracy"]) <= 0.01
