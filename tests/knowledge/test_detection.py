"""Detection terms against independent float64 NumPy references, and inside a Distiller."""
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfkd
import tfkd.students
from kd_numpy import (np_attention_guided, np_bounded_regression, np_cell_mask, np_conv1x1,
                      np_detection_soft_targets, np_foreground_imitation, np_old_class,
                      np_resize_bilinear)
from tfkd.knowledge import View
from tfkd.knowledge import detection
from tfkd.knowledge.detection import (AttentionGuided, BoundedRegression, DetectionSoftTargets,
                                      ForegroundImitation, OldClassDistillation)

TERMS = [DetectionSoftTargets, BoundedRegression, ForegroundImitation, AttentionGuided,
         OldClassDistillation]
ANCHORS = tfkd.Anchors(image_size=(64, 64))  # strides 16, 32, 64: 4x4, 2x2, 1x1 cells
LEVELS = ("p4", "p5", "p6")
GRIDS = dict(zip(LEVELS, ANCHORS.grid_sizes))
N = len(ANCHORS)
# Three images: two objects, none, one. No box edge lies on a cell centre of any level
# (4x4: .125 .375 .625 .875; 2x2: .25 .75; 1x1: .5), so the masks are unambiguous.
BOXES = [[[0.10, 0.05, 0.60, 0.45], [0.55, 0.52, 0.95, 0.90]], [], [[0.20, 0.30, 0.80, 0.70]]]
CLASSES = [[1, 3], [], [0]]
K = 4


def sym(view):
    spec = lambda x: keras.KerasTensor((None,) + np.shape(x)[1:], dtype="float32")
    return View(keras.tree.map_structure(spec, view.outputs),
                {k: spec(x) for k, x in view.features.items()})


def built(term, teacher, student):
    term.build_term(None if teacher is None else sym(teacher), sym(student))
    return term


def scene(rng, s_grids=None, k_teacher=K, k_student=K):
    """Teacher / student views of the 3 images, the encoder's y and per-anchor weights."""
    encode = ANCHORS.encoder(k_student)
    ys, ws = [], []
    for boxes, classes in zip(BOXES, CLASSES):
        b = np.zeros((3, 4), "float32")
        c = -np.ones((3,), "int32")
        if boxes:
            b[:len(boxes)], c[:len(classes)] = boxes, classes
        y, w = encode(b, c)
        ys.append(y), ws.append(w)
    y = {key: np.stack([v[key].numpy() for v in ys]) for key in ys[0]}
    w = {key: np.stack([v[key].numpy() for v in ws]) for key in ws[0]}
    normal = lambda *shape: rng.normal(size=(3, *shape)).astype("float32")
    s_grids = s_grids or GRIDS
    teacher = View({"class_logits": 5.0 * y["class_logits"][..., :k_teacher] - 3.0
                    + normal(N, k_teacher),
                    "box_regression": y["box_regression"] + 0.5 * normal(N, 4)},
                   {name: normal(*GRIDS[name], 6) for name in LEVELS})
    student = View({"class_logits": normal(N, k_student) - 1.0,
                    "box_regression": y["box_regression"] + normal(N, 4)},
                   {name: normal(*s_grids[name], 3) for name in LEVELS})
    return teacher, student, y, w


def positives(w):
    return w["box_regression"] > 0


def check_reductions(term, teacher, student, y, w, ref, rtol=1e-5):
    """compute == ref; dict weights: mean over images; per-image weights: Keras' reduction."""
    np.testing.assert_allclose(np.asarray(term.compute(teacher, student, y, w)), ref, rtol=rtol,
                               atol=1e-6)
    # The positives read from y and from the per-anchor weights are the same anchors.
    np.testing.assert_allclose(np.asarray(term.compute(teacher, student, y)), ref, rtol=rtol,
                               atol=1e-6)
    assert float(term.loss(teacher, student, y, w)) == pytest.approx(ref.mean(), rel=rtol)
    per_image = np.array([1.0, 0.0, 2.0], "float32")
    assert float(term.loss(teacher, student, y, per_image)) == pytest.approx(
        np.sum(ref * per_image) / 3, rel=rtol)


def test_the_scene_has_positives_and_an_empty_image():
    _, _, y, w = scene(np.random.default_rng(0))
    pos = positives(w)
    assert pos[0].sum() >= 2 and pos[1].sum() == 0 and pos[2].sum() >= 1
    np.testing.assert_array_equal(pos, y["class_logits"].max(-1) > 0.5)


# ----- DetectionSoftTargets -----------------------------------------------------------------


@pytest.mark.parametrize("temp,bg", [(1.0, 1.5), (2.5, 0.0)])
def test_detection_soft_targets_with_labels_matches_numpy(rng, temp, bg):
    teacher, student, y, w = scene(rng)
    term = built(DetectionSoftTargets(temperature=temp, background_weight=bg), teacher, student)
    assert term.requires_labels
    ref = np_detection_soft_targets(teacher.outputs["class_logits"],
                                    student.outputs["class_logits"], temp, bg, positives(w))
    check_reductions(term, teacher, student, y, w, ref)
    # The image without objects normalises by 1, and every anchor there is background.
    assert (ref[1] > 1e-9) == (bg > 0)


def test_detection_soft_targets_from_the_teacher_needs_no_labels(rng):
    teacher, student, _, _ = scene(rng)
    term = built(DetectionSoftTargets(background="teacher", background_weight=3.0), teacher,
                 student)
    assert not term.requires_labels and DetectionSoftTargets.requires_labels
    z_t = teacher.outputs["class_logits"]
    foreground = 1 / (1 + np.exp(-z_t.astype(np.float64).max(-1))) >= 0.5
    ref = np_detection_soft_targets(z_t, student.outputs["class_logits"], 1.0, 3.0, foreground)
    np.testing.assert_allclose(np.asarray(term.compute(teacher, student)), ref, rtol=1e-5)
    assert float(term.loss(teacher, student)) == pytest.approx(ref.mean(), rel=1e-5)
    assert float(term.loss(teacher, teacher)) == pytest.approx(0.0, abs=1e-6)


# ----- BoundedRegression --------------------------------------------------------------------


@pytest.mark.parametrize("margin", [0.0, 0.7, -0.3])
def test_bounded_regression_matches_numpy(rng, margin):
    teacher, student, y, w = scene(rng)
    term = built(BoundedRegression(margin=margin), teacher, student)
    r_t, r_s = teacher.outputs["box_regression"], student.outputs["box_regression"]
    ref = np_bounded_regression(r_t, r_s, y["box_regression"], positives(w), margin)
    check_reductions(term, teacher, student, y, w, ref)
    assert ref[1] == 0.0  # no objects, no regression


def test_bounded_regression_pulls_only_where_the_student_is_worse(rng):
    teacher, student, y, w = scene(rng)
    term = BoundedRegression()
    r_s = tf.Variable(student.outputs["box_regression"])
    with tf.GradientTape() as tape:
        value = term.loss(teacher, View(dict(student.outputs, box_regression=r_s)), y, w)
    grad = tape.gradient(value, r_s).numpy().astype(np.float64)
    y_box, r_t = y["box_regression"].astype(np.float64), teacher.outputs["box_regression"]
    d_s = ((r_s.numpy() - y_box) ** 2).sum(-1)
    d_t = ((r_t - y_box) ** 2).sum(-1)
    on = positives(w) & (d_s > d_t)
    count = np.maximum(positives(w).sum(-1), 1)[:, None, None]
    expected = np.where(on[..., None], 2 * (r_s.numpy() - y_box), 0.0) / count / 3  # mean of 3
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-7)
    assert on.any() and (positives(w) & ~on).any()  # both cases occur


# ----- ForegroundImitation ------------------------------------------------------------------


def np_masks():
    """Per level (3, h, w) masks from the raw ground-truth boxes (not the decoded targets)."""
    return [np.stack([np_cell_mask(boxes, *GRIDS[name]) for boxes in BOXES]) for name in LEVELS]


@pytest.mark.parametrize("background_weight", [0.0, 0.3])
def test_foreground_imitation_matches_numpy(rng, background_weight):
    teacher, student, y, w = scene(rng)
    term = built(ForegroundImitation(ANCHORS, background_weight=background_weight), teacher,
                 student)
    masks = np_masks()
    assert masks[0][0].sum() > 0 and masks[0][1].sum() == 0 and masks[2][2].all()
    adapted = [np_conv1x1(student.features[name], *adapter.get_weights())
               for name, adapter in zip(LEVELS, term.adapters)]
    ref = np_foreground_imitation([teacher.features[n] for n in LEVELS], adapted, masks,
                                  background_weight)
    check_reductions(term, teacher, student, y, w, ref)
    assert (ref[1] == 0.0) == (background_weight == 0.0)


def test_foreground_imitation_takes_anchors_as_object_config_or_image_size():
    configs = [ForegroundImitation(a).get_config()
               for a in (ANCHORS, ANCHORS.get_config(), (64, 64), [64.0, 64.0])]
    assert all(c == configs[0] for c in configs)
    json.dumps(configs[0])  # the config is JSON
    term = ForegroundImitation(tfkd.Anchors(image_size=(64, 64), strides=(16, 32)), ["p4"], ["p4"],
                               name="fg")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(term))
    assert restored.anchors.strides == (16, 32) and restored.get_config() == term.get_config()
    with pytest.raises(TypeError, match="`anchors` must be the detector's tfkd.Anchors"):
        ForegroundImitation("anchors")
    # By name without anchors (the detection recipe completes the config), not trainable as is.
    bare = tfkd.knowledge.get("foreground_imitation")
    assert bare.get_config()["anchors"] is None
    teacher, student, _, _ = scene(np.random.default_rng(0))
    with pytest.raises(ValueError, match="ForegroundImitation needs the detector's anchors"):
        built(bare, teacher, student)
    done = ForegroundImitation.from_config({**bare.get_config(), "anchors": ANCHORS.get_config()})
    assert done.get_config() == ForegroundImitation(ANCHORS).get_config()


# ----- AttentionGuided ----------------------------------------------------------------------


def test_attention_guided_matches_numpy_with_a_resized_student(rng):
    half = {name: (max(h // 2, 1), max(w // 2, 1)) for name, (h, w) in GRIDS.items()}
    teacher, student, y, w = scene(rng, s_grids=half)
    term = built(AttentionGuided(temperature=0.7, alpha=0.6, beta=1.8), teacher, student)
    t_maps = [teacher.features[n] for n in LEVELS]
    s_maps = [np_resize_bilinear(student.features[n], GRIDS[n]) for n in LEVELS]
    f_maps = [np_conv1x1(s, *a.get_weights()) for s, a in zip(s_maps, term.adapters)]
    ref = np_attention_guided(t_maps, s_maps, f_maps, 0.7, 0.6, 1.8)
    check_reductions(term, teacher, student, y, w, ref)
    assert not term.requires_labels
    np.testing.assert_allclose(np.asarray(term.compute(teacher, student)), ref, rtol=1e-5)


def test_attention_guided_is_zero_when_the_adapted_student_is_the_teacher(rng):
    teacher, _, _, _ = scene(rng)
    twin = View(None, dict(teacher.features))
    term = built(AttentionGuided(), teacher, twin)
    for adapter in term.adapters:  # identity 1x1 convolutions
        kernel, bias = adapter.get_weights()
        adapter.set_weights([np.eye(kernel.shape[-1], dtype="float32")[None, None], bias * 0])
    assert float(term.loss(teacher, twin)) == pytest.approx(0.0, abs=1e-6)


# ----- OldClassDistillation -----------------------------------------------------------------


@pytest.mark.parametrize("top_k,box_weight,threshold", [(None, 1.0, 0.5), (10, 0.3, 0.2)])
def test_old_class_distillation_matches_numpy(rng, top_k, box_weight, threshold):
    teacher, student, y, w = scene(rng, k_teacher=2, k_student=K)
    term = built(OldClassDistillation(top_k=top_k, box_weight=box_weight,
                                      score_threshold=threshold), teacher, student)
    ref = np_old_class(teacher.outputs["class_logits"], student.outputs["class_logits"],
                       teacher.outputs["box_regression"], student.outputs["box_regression"],
                       top_k, box_weight, threshold)
    check_reductions(term, teacher, student, y, w, ref)
    # The new classes' columns are free: changing them changes nothing.
    moved = dict(student.outputs)
    moved["class_logits"] = moved["class_logits"].copy()
    moved["class_logits"][..., 2:] += 5.0
    np.testing.assert_allclose(np.asarray(term.compute(teacher, View(moved))), ref, rtol=1e-5)


# ----- the contract of every term -----------------------------------------------------------


def take(view, index):
    pick = lambda x: np.asarray(x)[index]
    return View(keras.tree.map_structure(pick, view.outputs),
                {k: pick(x) for k, x in view.features.items()})


@pytest.mark.parametrize("cls", TERMS, ids=lambda c: c.default_name)
def test_each_image_is_its_own_on_the_example_views(cls):
    """test_common's per-sample check, with the encoder's dict of labels sliced per image."""
    teacher, student, y = cls.example_views(batch=6)
    term = built(cls(**cls.example_args), teacher, student)
    full = np.asarray(term.compute(teacher, student, y))
    head = np.arange(3)
    y3 = keras.tree.map_structure(lambda v: v[head], y)
    np.testing.assert_allclose(np.asarray(term.compute(take(teacher, head), take(student, head),
                                                       y3)), full[head], rtol=1e-5, atol=1e-7)
    assert full.shape == (6,) and np.all(np.isfinite(full)) and full.max() > 0


def test_the_detection_terms_are_registered_and_exported():
    for cls in TERMS:
        assert tfkd.knowledge.available()[cls.default_name] is cls
        assert getattr(tfkd.knowledge, cls.__name__) is cls
        assert cls.example_inputs == "detection"
    assert type(tfkd.knowledge.get("fgfi:anchors=(64,64),student_layers=[p4],"
                                   "teacher_layers=[p4]")) is ForegroundImitation
    assert tfkd.knowledge.get("ilod:top_k=64").top_k == 64


def test_argument_and_input_errors(rng):
    teacher, student, y, w = scene(rng)
    with pytest.raises(ValueError, match="`background` must be 'labels'.*or 'teacher'"):
        DetectionSoftTargets(background="gt")
    with pytest.raises(ValueError, match="must pair up one to one"):
        AttentionGuided(["p4", "p5"], ["p4"])
    with pytest.raises(TypeError, match="`student_layers` must be a layer name"):
        AttentionGuided([3], ["p4"])
    with pytest.raises(ValueError, match="`top_k` must be an integer >= 1"):
        OldClassDistillation(top_k=0)
    with pytest.raises(ValueError, match=r"`score_threshold` must be in \[0, 1\]"):
        OldClassDistillation(score_threshold=1.5)
    with pytest.raises(ValueError, match="`margin` must be finite"):
        BoundedRegression(margin=float("inf"))
    # A model that is not a detector.
    plain = View(np.zeros((3, 5), "float32"))
    with pytest.raises(ValueError, match="the teacher must be a detector whose outputs are a dict"):
        built(DetectionSoftTargets(), plain, student)
    # Missing or malformed labels.
    term = built(BoundedRegression(), teacher, student)
    with pytest.raises(ValueError, match="BoundedRegression needs the ground truth"):
        term.loss(teacher, student, None)
    with pytest.raises(ValueError, match="the labels must be the dict of tfkd.Anchors.encoder"):
        term.loss(teacher, student, y["box_regression"])
    # Anchors that are not the detector's.
    small = tfkd.Anchors(image_size=(64, 64), strides=(16, 32))
    with pytest.raises(ValueError, match=rf"predicts against {N} anchors but `anchors` has "
                                         rf"{len(small)}"):
        built(ForegroundImitation(small), teacher, student)
    # Class counts.
    narrow = View(dict(student.outputs, class_logits=student.outputs["class_logits"][..., :2]))
    with pytest.raises(ValueError, match="the teacher predicts 4 classes and the student 2"):
        built(DetectionSoftTargets(), teacher, narrow)
    with pytest.raises(ValueError, match="old detector \\(teacher\\) has 4 classes but the new "
                                         "one \\(student\\) only 2"):
        built(OldClassDistillation(), teacher, narrow)
    with pytest.raises(ValueError, match=f"top_k=500 but the detectors have {N} anchors"):
        built(OldClassDistillation(top_k=500), teacher, student)
    with pytest.raises(ValueError, match="feature 'p7' was not tapped"):
        built(AttentionGuided(["p7"], ["p4"]), teacher, student)


@pytest.mark.parametrize("cls", TERMS, ids=lambda c: c.default_name)
def test_the_loss_with_per_anchor_weights_compiles_with_xla(cls, rng):
    k_teacher = 2 if cls is OldClassDistillation else K
    teacher, student, y, w = scene(rng, k_teacher=k_teacher)
    term = built(cls(**{**cls.example_args, "anchors": ANCHORS}
                     if cls is ForegroundImitation else cls.example_args), teacher, student)

    @tf.function(jit_compile=True)
    def run(t_out, t_feat, s_out, s_feat, y, w):
        return term.loss(View(t_out, t_feat), View(s_out, s_feat), y, w)

    compiled = run(teacher.outputs, teacher.features, student.outputs, student.features, y, w)
    assert float(compiled) == pytest.approx(float(term.loss(teacher, student, y, w)), rel=1e-4,
                                            abs=1e-6)


# ----- inside a Distiller -------------------------------------------------------------------


@pytest.fixture(scope="module")
def detectors():
    keras.utils.set_random_seed(0)
    build = lambda k, width: tfkd.students.build("ssd_mobile", input_shape=(64, 64, 3),
                                                 num_classes=k, width=width, anchors=ANCHORS)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    boxes = np.zeros((4, 2, 4), "float32")
    classes = -np.ones((4, 2), "int32")
    for i in range(4):
        boxes[i, 0] = [0.1 + 0.1 * i, 0.2, 0.6 + 0.05 * i, 0.7]
        classes[i, 0] = i % 2
    enc = ANCHORS.encoder(2)
    data = tf.data.Dataset.from_tensor_slices((x, boxes, classes))
    data = data.map(lambda a, b, c: (a, *enc(b, c))).batch(2)
    return {"student": build(2, 0.25), "teacher": build(2, 0.5), "old": build(1, 0.5),
            "data": data}


@pytest.mark.parametrize("cls", TERMS, ids=lambda c: c.default_name)
def test_trains_in_a_distiller_on_ssd_mobile(detectors, cls):
    # A margin that keeps the bound open between two untrained detectors.
    args = {ForegroundImitation: {"anchors": ANCHORS}, BoundedRegression: {"margin": 10.0}}
    term = cls(**args.get(cls, {}))
    teacher = detectors["old" if cls is OldClassDistillation else "teacher"]
    distiller = tfkd.Distiller(detectors["student"], teacher, knowledge=[term])
    # Eagerly: tracing ssd_mobile's train step costs ~25 s of CPU per Distiller, and the
    # terms' traced and XLA-compiled losses are checked above and in test_common.
    distiller.compile(keras.optimizers.Adam(1e-3), loss=tfkd.anchors.detection_losses(),
                      run_eagerly=True)
    before = [v.numpy().copy() for v in term.trainable_weights]
    history = distiller.fit(detectors["data"], epochs=1, shuffle=False, verbose=0).history
    values = history[f"{term.name}_loss"]
    assert len(values) == 1 and np.isfinite(values[0]) and values[0] > 0
    assert np.isfinite(history["loss"][0])
    # The adapters (feature terms) are trained with the student.
    assert len(before) == (6 if isinstance(term, detection._LevelTerm) else 0)
    assert all(not np.allclose(b, v.numpy()) for b, v in zip(before, term.trainable_weights))
