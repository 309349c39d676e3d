"""Recipes: flags, knowledge specs, bad input, and tiny end-to-end runs of the classification,
medical, multilabel and low-resolution recipes on real local data."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dataclasses
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
from recipes import config as rconfig  # noqa: E402
from recipes import flow  # noqa: E402
from recipes import report  # noqa: E402
from recipes.task import ClassificationTask  # noqa: E402
from tfkd import data as tdata

SAMPLE = REPO / "recipes" / "data" / "cifar10_sample.npz"
TEACHER = REPO / "recipes" / "data" / "cifar10_resnet20_teacher.keras"


def tiny(tmp_path, **kw):
    base = dict(data=str(SAMPLE), teacher=str(TEACHER), max_train=128, max_test=64,
                epochs=1, teacher_epochs=1, batch_size=32, baseline=False, latency=False,
                verbose=0, output_dir=str(tmp_path / "out"))
    base.update(kw)
    return rconfig.Config(**base)


def test_helpfull_documents_every_flag():
    proc = subprocess.run([sys.executable, "-m", "recipes.classification", "--helpfull"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]  # absl exits 1 after --help
    for field in dataclasses.fields(rconfig.Config):
        assert (f"--{field.name}:" in proc.stdout or f"--[no]{field.name}:" in proc.stdout), \
            field.name
    assert "mobilenet_tiny" in proc.stdout
    # --knowledge lists the registered terms (tfkd.knowledge.describe()), each by its name.
    import tfkd.knowledge

    for name in tfkd.knowledge.available():
        assert name in proc.stdout, name


# -- --knowledge: registry specs, with the older flags filling in ---------------------------
def test_knowledge_specs_build_those_terms():
    import tfkd.knowledge as K

    terms = rconfig.knowledge_terms(rconfig.Config(
        knowledge="soft_targets,hint:student_layer=stage2,teacher_layer=stage3"))
    assert [type(t) for t in terms] == [K.SoftTargets, K.Hint]
    assert (terms[1].student_layer, terms[1].teacher_layer) == ("stage2", "stage3")
    assert terms[0].temperature == 4.0  # --temperature's default


def test_knowledge_flags_fill_in_what_a_spec_leaves_out():
    import tfkd.knowledge as K

    terms = rconfig.knowledge_terms(rconfig.Config(
        knowledge="soft_targets,dkd:temperature=8,hint,attention", temperature=2.0,
        kd_weight=0.5, feature_weight=3.0, feature_pairs=("stage1:stage1", "stage3:stage2")))
    soft, dkd, hint1, hint3, attention = terms
    assert soft.temperature == 2.0 and soft.weight == 0.5
    assert dkd.temperature == 8.0 and dkd.weight == 0.5  # the spec wins over --temperature
    assert isinstance(hint1, K.Hint) and (hint1.student_layer, hint1.teacher_layer) == (
        "stage1", "stage1")
    assert (hint3.student_layer, hint3.teacher_layer) == ("stage3", "stage2")
    assert hint1.weight == 3.0 and attention.weight == 3.0
    assert isinstance(attention, K.AttentionTransfer)
    assert [tuple(p) for p in attention.pairs] == [("stage1", "stage1"), ("stage3", "stage2")]


def test_warmup_steps_in_a_spec_are_the_warmup_epochs_of_this_training_set():
    spec = "review_kd:student_layers=[stage2,stage3],teacher_layers=[stage2,stage3]," \
           "weight=warmup(5.0,{warmup_steps})"
    config = rconfig.Config(knowledge=spec, warmup_epochs=1.5)
    (term,) = rconfig.knowledge_terms(config, steps_per_epoch=10)
    at = lambda step: float(term.weight(step))
    assert at(0) == 0.0 and at(15) == pytest.approx(5.0) and 0.0 < at(10) < 5.0
    (checked,) = rconfig.knowledge_terms(config)  # before the data: a 1-step warm-up
    assert float(checked.weight(1)) == pytest.approx(5.0)
    with pytest.raises(rconfig.RecipeError, match="--warmup_epochs=-1.0: use 0 or more"):
        rconfig.check(rconfig.Config(knowledge=spec, warmup_epochs=-1.0))


def test_knowledge_flag_keeps_the_commas_of_a_spec():
    from absl import flags

    from recipes import classification  # noqa: F401  (defines the flags)

    spec = "soft_targets,hint:student_layer=stage3,teacher_layer=stage3"
    flags.FLAGS.unparse_flags()
    try:
        flags.FLAGS(["recipe", f"--knowledge={spec}", "--temperature=3"])
        config = rconfig.from_flags()
    finally:
        flags.FLAGS.unparse_flags()
    assert config.knowledge == spec
    names = [t.name for t in rconfig.knowledge_terms(config)]
    assert names == ["soft_targets", "hint"]


# -- bad input, each refused before any training ---------------------------------------------
def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(rconfig.RecipeError, match="Cannot write the report folder"):
        flow.run(tiny(tmp_path, output_dir=str(blocker / "report")), ClassificationTask())


def test_student_not_in_zoo_lists_the_names(tmp_path):
    with pytest.raises(rconfig.RecipeError, match="'resnet50' is not in the zoo: mobile_cnn, "
                                                  "mobilenet_tiny, resnet_tiny"):
        flow.run(tiny(tmp_path, student="resnet50"), ClassificationTask())
    assert not (tmp_path / "out").exists()


def test_unknown_knowledge_term(tmp_path):
    with pytest.raises(rconfig.RecipeError, match="--knowledge='soft_targets,atention': Unknown "
                                                  "knowledge term 'atention'.*'attention'"):
        flow.run(tiny(tmp_path, knowledge="soft_targets,atention"), ClassificationTask())
    assert not (tmp_path / "out").exists()  # refused before the report folder is made


def test_teacher_output_width_must_match_the_classes(tmp_path):
    config = tiny(tmp_path, data=str(SHARED_DATA / "breastmnist.npz"),
                  teacher=str(SHARED_MODELS / "cifar10_resnet20_teacher.keras"))
    with pytest.raises(tdata.DataError, match="outputs 10 values but the data has 2 classes"):
        flow.run(config, ClassificationTask())


def test_bad_npz_and_empty_folder_through_the_recipe(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, pixels=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(tdata.DataError, match=r"it has \['pixels'\]"):
        flow.run(tiny(tmp_path, data=str(bad)), ClassificationTask())
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    with pytest.raises(tdata.DataError, match="No images"):
        flow.run(tiny(tmp_path, data=str(tmp_path / "imgs")), ClassificationTask())


def test_cache_with_augment_is_refused(tmp_path):
    with pytest.raises(tdata.RandomPipelineError, match="Drop --cache_teacher"):
        flow.run(tiny(tmp_path, cache_teacher=True, augment=True), ClassificationTask())


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
    metrics = flow.run(config, medical.MedicalTask())
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
                  image_size=32, max_train=64, max_test=64, knowledge="binary_soft_targets")
    metrics = flow.run(config, multilabel.MultilabelTask())
    rows = {r["model"]: r for r in metrics["rows"]}
    assert metrics["num_classes"] == 80
    assert 0 < rows["int8 student (.tflite)"]["map"] <= 1
    assert "binary_soft_targets_loss" in metrics["distillation_history"]


def test_low_resolution_student_with_learned_frontend(tmp_path):
    import tfkd.tflite as tfl
    from recipes import low_resolution

    config = tiny(tmp_path, knowledge="soft_targets", cache_teacher=True)
    metrics = flow.run(config, low_resolution.LowResolutionTask(factor=4, sr_frontend=True))
    history = metrics["distillation_history"]
    assert "hint_loss" in history and "soft_targets_loss" in history
    report = tfl.inspect(metrics["artifacts"]["tflite"])
    assert list(report.inputs[0].shape)[1:] == [8, 8, 3]  # the student sees 8x8 images
    assert "RESIZE_BILINEAR" in report.op_counts


def test_classification_recipe_with_quantization_aware_distillation(tmp_path):
    config = tiny(tmp_path, qat_epochs=1, export="int8", knowledge="soft_targets,hint",
                  feature_pairs=("stage3:stage3",))
    metrics = flow.run(config, ClassificationTask())
    rows = {r["model"]: r for r in metrics["rows"]}
    int8 = rows["int8 student (.tflite)"]
    assert int8["fully_int8"] is True
    assert metrics["artifacts"]["tflite"].endswith(".tflite")
    # The QAT student is what was exported: its int8 file agrees with its Keras accuracy.
    qat_rows = [r for name, r in rows.items() if "QAT" in name or "quantization" in name]
    assert qat_rows, sorted(rows)
    assert abs(int8["accuracy"] - qat_rows[0]["accuracy"]) <= 0.05


class _TaskWithPictures(ClassificationTask):
    """A task whose report has a picture of its own: the hook dense tasks use for masks,
    boxes and images."""

    seen = None

    def pictures(self, out_dir, examples):
        type(self).seen = examples
        (out_dir / "examples.txt").write_text(str(examples["y"].tolist()))
        return [("labels of the first test images", "examples.txt")]


def test_weak_teacher_short_run_and_task_pictures_are_in_the_report(tmp_path):
    """A teacher worse than the student alone (the reference teacher with its logits negated:
    it picks its least likely class) is named in the output and in report.md, and so is a run
    too short for the BatchNorm moving averages (4 steps)."""
    import keras

    reference = keras.models.load_model(TEACHER)
    negated = keras.layers.Rescaling(-1.0, name="negate")(reference.outputs[0])
    weak = keras.Model(reference.inputs, negated, name="weak_teacher")
    weak.save(tmp_path / "weak.keras")
    config = tiny(tmp_path, teacher=str(tmp_path / "weak.keras"), baseline=True, export="none",
                  knowledge="soft_targets,hint:student_layer=stage3,teacher_layer=stage3")
    metrics = flow.run(config, _TaskWithPictures())
    rows = {r["model"]: r for r in metrics["rows"]}
    assert rows["teacher"]["accuracy"] < rows["student alone"]["accuracy"]
    assert metrics["teacher_weaker_than_student"] is True
    report_md = (tmp_path / "out" / "report.md").read_text()
    assert "## Warnings" in report_md
    assert "The teacher scores below the student trained alone" in report_md
    assert "expected to hurt" in report_md
    # 128 images at batch 32 for 1 epoch: 4 steps, too few for the moving averages.
    assert any(n.startswith("BatchNorm: the distilled student trains 4 steps")
               for n in metrics["notes"])
    assert "hint_loss" in metrics["distillation_history"]
    examples = _TaskWithPictures.seen
    assert set(examples["outputs"]) == {"teacher", "student alone", "distilled student"}
    assert examples["outputs"]["teacher"].shape == (16, 10) and len(examples["x"]) == 16
    assert "![labels of the first test images](examples.txt)" in report_md
    line = report.summary_line(metrics, config.output_dir)
    assert "warning(s) in the report" in line


def test_weaker_follows_the_direction_of_the_headline():
    class LowerIsBetter(ClassificationTask):
        headline, higher_is_better = "error", False

    assert flow.is_worse(ClassificationTask(), {"accuracy": 0.2}, {"accuracy": 0.5})
    assert not flow.is_worse(ClassificationTask(), {"accuracy": 0.5}, {"accuracy": 0.5})
    assert flow.is_worse(LowerIsBetter(), {"error": 0.5}, {"error": 0.2})
    assert not flow.is_worse(ClassificationTask(), {"accuracy": float("nan")}, {"accuracy": 0.5})


def test_the_classification_default_mix_runs_to_an_int8_student(tmp_path):
    """The default --knowledge (a warm-up among its arguments, filled in from the data) trains
    and exports on the zoo's tap names, with the reference teacher."""
    from recipes import classification

    config = tiny(tmp_path, knowledge=classification.BEST_KNOWLEDGE, export="int8")
    metrics = flow.run(config, ClassificationTask())
    rows = {r["model"]: r for r in metrics["rows"]}
    expected = [t.name for t in rconfig.knowledge_terms(config)]
    assert rows["distilled student"]["knowledge"] == expected
    assert rows["int8 student (.tflite)"]["fully_int8"] is True


def test_the_classification_default_is_the_benchmarks_best_portable_row():
    """The recipe's default mix is the committed benchmark's best 3-seed row among those that tap
    only the zoo's common names (so it runs for every zoo teacher and student)."""
    import json
    import re

    from recipes import classification

    results = json.loads((REPO / "benchmarks" / "results" / "kd_cifar10.json").read_text())
    def portable(specs):
        taps = re.findall(r"(?:student|teacher)_layers?=\[?([\w,]+?)\]?(?:,[a-z_]+=|$)",
                          ";".join(specs))
        names = {n for group in taps for n in group.split(",")}
        return names <= {"stage1", "stage2", "stage3", "pool"}

    rows = [v for v in results["summary"].values()
            if v["student"] == "mobile_cnn" and v["seeds"] >= 3 and v["specs"]
            and v["row"] != "keras_kl" and portable(v["specs"])]
    best = max(rows, key=lambda v: v["final"][0])
    assert ",".join(best["specs"]) == classification.BEST_KNOWLEDGE
