"""Recipes: flags, bad input, and tiny end-to-end runs of the medical, multilabel and
low-resolution recipes on real local data."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dataclasses
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from shared_paths import REPO, SHARED_DATA, SHARED_MODELS

# tests/pytest.ini puts tests/ first on sys.path, where tests/recipes/ would shadow the
# repository's `recipes` package as a namespace package: put the repository first.
sys.path.insert(0, str(REPO))
if getattr(sys.modules.get("recipes"), "__file__", "") is None:
    del sys.modules["recipes"]
from recipes import common  # noqa: E402
from tfkd import data as tdata

SAMPLE = REPO / "recipes" / "data" / "cifar10_sample.npz"
TEACHER = REPO / "recipes" / "data" / "cifar10_resnet20_teacher.keras"


def tiny(tmp_path, **kw):
    base = dict(data=str(SAMPLE), teacher=str(TEACHER), max_train=128, max_test=64,
                epochs=1, teacher_epochs=1, batch_size=32, baseline=False, latency=False,
                verbose=0, output_dir=str(tmp_path / "out"))
    base.update(kw)
    return common.Config(**base)


def test_helpfull_documents_every_flag():
    proc = subprocess.run([sys.executable, "-m", "recipes.classification", "--helpfull"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]  # absl exits 1 after --help
    for field in dataclasses.fields(common.Config):
        assert (f"--{field.name}:" in proc.stdout or f"--[no]{field.name}:" in proc.stdout), \
            field.name
    assert "mobilenet_tiny" in proc.stdout and "binary_soft_targets" in proc.stdout


# -- bad input, each refused before any training ---------------------------------------------
def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(common.RecipeError, match="Cannot write the report folder"):
        common.run(tiny(tmp_path, output_dir=str(blocker / "report")),
                   common.classification_task())


def test_student_not_in_zoo_lists_the_names(tmp_path):
    with pytest.raises(common.RecipeError, match="'resnet50' is not in the zoo: mobile_cnn, "
                                                 "mobilenet_tiny, resnet_tiny"):
        common.run(tiny(tmp_path, student="resnet50"), common.classification_task())
    assert not (tmp_path / "out").exists()


def test_unknown_knowledge_term(tmp_path):
    with pytest.raises(common.RecipeError, match="Unknown --knowledge term 'kd'"):
        common.run(tiny(tmp_path, knowledge=("kd",)), common.classification_task())


def test_teacher_output_width_must_match_the_classes(tmp_path):
    config = tiny(tmp_path, data=str(SHARED_DATA / "breastmnist.npz"),
                  teacher=str(SHARED_MODELS / "cifar10_resnet20_teacher.keras"))
    with pytest.raises(tdata.DataError, match="outputs 10 values but the data has 2 classes"):
        common.run(config, common.classification_task())


def test_bad_npz_and_empty_folder_through_the_recipe(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, pixels=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(tdata.DataError, match=r"it has \['pixels'\]"):
        common.run(tiny(tmp_path, data=str(bad)), common.classification_task())
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    with pytest.raises(tdata.DataError, match="No images"):
        common.run(tiny(tmp_path, data=str(tmp_path / "imgs")), common.classification_task())


def test_cache_with_augment_is_refused(tmp_path):
    with pytest.raises(tdata.RandomPipelineError, match="Drop --cache_teacher"):
        common.run(tiny(tmp_path, cache_teacher=True, augment=True),
                   common.classification_task())


# -- metrics ---------------------------------------------------------------------------------
def test_medical_metrics_against_hand_computed_values():
    from recipes import medical

    y = np.array([0, 0, 1, 1, 1])
    # Scores for class 1: positives 0.9, 0.4, 0.8; negatives 0.1, 0.4 -> pairs won: 5.5 of 6.
    p1 = np.array([0.1, 0.4, 0.9, 0.4, 0.8])
    assert medical.roc_auc(y == 1, p1) == pytest.approx(5.5 / 6)
    logits = np.log(np.stack([1 - p1, p1], 1))
    scores = medical.medical_scores(y, logits)
    # predictions: 0, 0, 1, 0, 1 -> recall class 0 = 1, class 1 = 2/3.
    assert scores["balanced_accuracy"] == pytest.approx((1 + 2 / 3) / 2)
    assert scores["accuracy"] == pytest.approx(4 / 5)
    w = medical.class_weights(np.array([0, 1, 1, 1]), 2)
    np.testing.assert_allclose(w, [2.0, 2 / 3])


def test_average_precision_hand_computed():
    from recipes import multilabel

    # Ranked: pos, neg, pos -> precisions at positives 1/1 and 2/3.
    assert multilabel.average_precision([1, 0, 1], [0.9, 0.5, 0.1]) == pytest.approx(
        (1 + 2 / 3) / 2)
    scores = multilabel.multilabel_scores(np.array([[1, 0], [0, 1]]),
                                          np.array([[2.0, -1.0], [-1.0, 3.0]]))
    assert scores["map"] == 1.0 and scores["micro_f1"] == 1.0


# -- tiny end-to-end runs --------------------------------------------------------------------
def test_medical_recipe_trains_teacher_and_reports_auc(tmp_path):
    from recipes import medical

    config = tiny(tmp_path, data=str(SHARED_DATA / "breastmnist.npz"), teacher="",
                  teacher_width=1.0, max_train=256, max_test=156, image_size=28,
                  student_width=0.5, export="int8")
    metrics = medical.run(config)
    rows = {r["model"]: r for r in metrics["rows"]}
    assert metrics["headline"] == "auc"
    for row in rows.values():
        assert 0 <= row["balanced_accuracy"] <= 1 and 0 <= row["auc"] <= 1
    assert "trained here" in metrics["teacher"]["source"]
    assert (tmp_path / "out" / "teacher.keras").is_file()
    assert rows["int8 student (.tflite)"]["fully_int8"] is True


def test_multilabel_recipe_on_coco128(tmp_path):
    from recipes import multilabel

    config = tiny(tmp_path, data=str(SHARED_DATA / "coco128"), teacher="", teacher_width=0.5,
                  image_size=32, max_train=64, max_test=64, knowledge=("binary_soft_targets",))
    metrics = multilabel.run(config)
    rows = {r["model"]: r for r in metrics["rows"]}
    assert metrics["num_classes"] == 80
    assert 0 < rows["int8 student (.tflite)"]["map"] <= 1
    assert "binary_soft_targets_loss" in metrics["distillation_history"]


def test_low_resolution_student_with_learned_frontend(tmp_path):
    import tfkd.tflite as tfl
    from recipes import low_resolution

    config = tiny(tmp_path, knowledge=("soft_targets",), cache_teacher=True)
    metrics = low_resolution.run(config, factor=4, sr_frontend=True)
    history = metrics["distillation_history"]
    assert "hint_loss" in history and "soft_targets_loss" in history
    report = tfl.inspect(metrics["artifacts"]["tflite"])
    assert list(report.inputs[0].shape)[1:] == [8, 8, 3]  # the student sees 8x8 images
    assert "RESIZE_BILINEAR" in report.op_counts


def test_classification_recipe_with_quantization_aware_distillation(tmp_path):
    config = tiny(tmp_path, qat_epochs=1, export="int8", knowledge=("soft_targets", "hint"),
                  feature_pairs=("stage3:stage3",))
    metrics = common.run(config, common.classification_task())
    rows = {r["model"]: r for r in metrics["rows"]}
    int8 = rows["int8 student (.tflite)"]
    assert int8["fully_int8"] is True
    assert metrics["artifacts"]["tflite"].endswith(".tflite")
    # The QAT student is what was exported: its int8 file agrees with its Keras accuracy.
    qat_rows = [r for name, r in rows.items() if "QAT" in name or "quantization" in name]
    assert qat_rows, sorted(rows)
    assert abs(int8["accuracy"] - qat_rows[0]["accuracy"]) <= 0.05
