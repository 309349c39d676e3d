"""The face recognition recipe end to end on a few real ORL faces, and its bad input."""
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
from recipes import face_recognition  # noqa: E402

ORL = SHARED_DATA / "orl_faces.npz"
pytestmark = pytest.mark.skipif(not ORL.is_file(), reason="needs ../shared/data/orl_faces.npz")


def tiny(tmp_path, **kw):
    base = dict(data=str(ORL), max_train=96, epochs=1, teacher_epochs=1, batch_size=16,
                teacher_arch="face_net", teacher_width=0.5, student="face_net",
                student_width=0.25, knowledge="embedding_kd,ekd", qat_epochs=1,
                baseline=True, latency=False, verbose=0, augment=True, target="mediapipe",
                output_dir=str(tmp_path / "out"))
    base.update(kw)
    return rconfig.Config(**base)


def task(**kw):
    return face_recognition.FaceRecognitionTask(**kw)


def test_recipe_runs_to_an_int8_embedder_that_mediapipe_runs(tmp_path):
    metrics = flow.run(tiny(tmp_path), task())
    out = tmp_path / "out"
    rows = {r["model"]: r for r in metrics["rows"]}
    assert list(rows) == ["teacher", "student alone", "distilled student",
                          "low-resolution distilled (x4)", "QAT student (Keras)",
                          "int8 student (.tflite)"]
    for r in rows.values():  # open-set scores on the 10 unseen people
        assert 0.5 < r["roc_auc"] <= 1.0 and 0.0 <= r["rank1"] <= 1.0, r
        assert r["tar@far=0.01"] <= r["tar@far=0.1"]
    # The int8 file embeds like the QAT model it came from.
    assert abs(rows["int8 student (.tflite)"]["roc_auc"] - rows["QAT student (Keras)"]["roc_auc"]) \
        < 0.02
    art = metrics["artifacts"]
    assert art["tflite_ops"].get("L2_NORMALIZATION") == 1 and art["edgetpu_compatible"] is True
    assert rows["int8 student (.tflite)"]["fully_int8"] is True
    # The real client: MediaPipe's ImageEmbedder gives LiteRT's embeddings.
    assert art["mediapipe"]["mean_cosine"] > 0.99, art["mediapipe"]
    report = (out / "report.md").read_text()
    assert "| model | roc_auc |" in report and "(roc.png)" in report
    assert (out / "roc.png").stat().st_size > 10_000
    assert (out / "neighbours.png").stat().st_size > 10_000
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["headline"] == "roc_auc" and saved["task"] == "face_recognition"


@pytest.mark.parametrize("change, task_kw, message", [
    ({}, dict(student_scale=3), "--student_scale=3"),
    (dict(student="mobile_cnn"), {}, "face models trained here are 'face_net'"),
    (dict(batch_size=4), {}, "--batch_size=4"),
    (dict(cache_teacher=True, augment=False), {}, "--cache_teacher: the face pipeline"),
])
def test_bad_flags_are_refused_before_any_data_is_read(tmp_path, change, task_kw, message):
    with pytest.raises(rconfig.RecipeError, match=message):
        flow.run(tiny(tmp_path, data="/nonexistent", **change), task(**task_kw))


def test_a_teacher_without_the_embedding_layer_is_refused_before_training(tmp_path):
    from tfkd import data
    from tfkd.students import embedding

    path = tmp_path / "t.keras"
    embedding.face_net((112, 92, 3), 30, 16, width=0.25).save(path)
    with pytest.raises(data.DataError, match="no layer 'emb'.*--embedding_layer"):
        flow.run(tiny(tmp_path, teacher=str(path)), task(embedding_layer="emb"))
