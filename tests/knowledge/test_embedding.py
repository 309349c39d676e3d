"""Embedding terms (faces, re-identification) against independent float64 NumPy references,
and the relation terms on (batch, D) embedding taps of functional models."""
import itertools
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfkd
from kd_numpy import keras_weighted
from kd_numpy import np_huber
from symbolic_views import build
from tfkd.knowledge import View
from tfkd.knowledge import embedding
from tfkd.taps import Tap

EmbeddingKD = embedding.EmbeddingKD
EKD = embedding.EvaluationOrientedKD
ECKD = embedding.ExclusivityConsistencyKD


def unit(x):
    """float32 L2-normalised rows."""
    x = np.asarray(x, np.float64)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype("float32")


def np_unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def emb(x):
    return {"embedding": x}


# ---------------------------------------------------------------- NumPy references (float64)
def np_embedding_distance(t, s, kernel, distance):
    s = np.asarray(s, np.float64)
    if kernel is not None:
        s = s @ np.asarray(kernel, np.float64)
    t, s = np_unit(t), np_unit(s)
    if distance == "cosine":
        return 1.0 - (s * t).sum(-1)
    return ((s - t) ** 2).sum(-1)


def np_ekd(t, s, y, w=None, far=0.1, rank_weight=1.0):
    """EKD by loops over the pairs i < j of samples with non-zero weight."""
    t, s = np_unit(t), np_unit(s)
    n = len(t)
    w = np.ones(n) if w is None else np.asarray(w, np.float64)
    pairs = [(i, j) for i, j in itertools.combinations(range(n), 2) if w[i] > 0 and w[j] > 0]
    sim_t = {p: t[p[0]] @ t[p[1]] for p in pairs}
    sim_s = {p: s[p[0]] @ s[p[1]] for p in pairs}
    negatives = [p for p in pairs if y[p[0]] != y[p[1]]]
    tau = math.inf
    if negatives:
        k = max(1, math.ceil(round(far * len(negatives), 9)))
        tau = sorted((sim_t[p] for p in negatives), reverse=True)[k - 1]
    num = den = 0.0
    for p in pairs:
        t_accepts, s_accepts = sim_t[p] >= tau, sim_s[p] >= tau
        if p in negatives and not (t_accepts or s_accepts):
            continue  # an easy negative: not a critical pair
        r = 1.0 + rank_weight * (t_accepts != s_accepts)
        num += w[p[0]] * w[p[1]] * r * (sim_s[p] - sim_t[p]) ** 2
        den += w[p[0]] * w[p[1]] * r
    return num / den if den else 0.0


def np_eckd(t, s, kernel, cosines, y, distance="l2"):
    own = np.clip(np.asarray(cosines, np.float64)[np.arange(len(y)), y], -1.0, 1.0)
    return (1.0 + (1.0 - own) / 2.0) * np_embedding_distance(t, s, kernel, distance)


def np_rkd(t, s, w, distance, angle):
    t, s = np.asarray(t, np.float64), np.asarray(s, np.float64)
    n = len(t)
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    wp = np.array([w[i] * w[j] for i, j in pairs])

    def psi_d(x):
        d = np.array([np.linalg.norm(x[i] - x[j]) for i, j in pairs])
        return d / ((wp * d).sum() / wp.sum())

    triplets = list(itertools.permutations(range(n), 3))
    wt = np.array([w[i] * w[j] * w[k] for i, j, k in triplets])

    def psi_a(x):
        out = []
        for i, j, k in triplets:
            a, b = x[i] - x[j], x[k] - x[j]
            out.append(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        return np.array(out)

    loss_d = (wp * np_huber(psi_d(s) - psi_d(t))).sum() / wp.sum()
    loss_a = (wt * np_huber(psi_a(s) - psi_a(t))).sum() / wt.sum()
    return distance * loss_d + angle * loss_a


def np_sp(t, s):
    def g(a):
        gram = np.asarray(a, np.float64) @ np.asarray(a, np.float64).T
        return gram / np.linalg.norm(gram, axis=1, keepdims=True)

    return ((g(t) - g(s)) ** 2).sum() / len(t) ** 2


@pytest.fixture
def faces(rng):
    """12 samples of 4 identities (3 each): 16-D teacher, 8-D student embeddings."""
    y = np.repeat(np.arange(4), 3)
    centres = rng.normal(size=(4, 16))
    t = unit(centres[y] + 0.7 * rng.normal(size=(12, 16)))
    s = unit(t[:, :8] + 0.4 * rng.normal(size=(12, 8)))
    head = np.zeros((12, 4), "float32")  # the student's head: its width is the label range
    return t, s, y, head


# ---------------------------------------------------------------- EmbeddingKD
@pytest.mark.parametrize("distance", ["cosine", "l2"])
@pytest.mark.parametrize("d_s,adapter", [(8, "auto"), (16, "auto"), (16, "always")])
def test_embedding_kd_matches_numpy_with_sample_weights(rng, distance, d_s, adapter):
    t = unit(rng.normal(size=(5, 16)))
    s = unit(rng.normal(size=(5, d_s)))
    w = np.array([1.0, 0.0, 2.0, 0.5, 1.0], "float32")
    tv, sv = View(None, emb(t)), View(None, emb(s))
    term = build(EmbeddingKD(distance=distance, adapter=adapter), tv, sv)
    assert (term.adapter is not None) == (d_s != 16 or adapter == "always")
    kernel = None if term.adapter is None else term.adapter.kernel.numpy()
    if kernel is not None:
        assert kernel.shape == (d_s, 16) and len(term.adapter.weights) == 1  # no bias
    per = np_embedding_distance(t, s, kernel, distance)
    np.testing.assert_allclose(np.asarray(term.compute(tv, sv)), per, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(term.loss(tv, sv, sample_weight=w)),
                               keras_weighted(per, w), rtol=1e-5, atol=1e-7)


def test_embedding_kd_l2_is_twice_cosine_and_ignores_the_scale_of_raw_taps(rng):
    t = rng.normal(size=(4, 8)).astype("float32")  # not normalised: the term normalises
    s = rng.normal(size=(4, 8)).astype("float32")
    tv, sv = View(None, emb(t)), View(None, emb(s))
    cos = np.asarray(EmbeddingKD().compute(tv, sv))
    l2 = np.asarray(EmbeddingKD(distance="l2").compute(tv, sv))
    np.testing.assert_allclose(l2, 2.0 * cos, rtol=1e-5, atol=1e-6)
    scaled = np.asarray(EmbeddingKD().compute(View(None, emb(5.0 * t)), View(None, emb(0.1 * s))))
    np.testing.assert_allclose(scaled, cos, rtol=1e-5, atol=1e-6)
    assert float(EmbeddingKD().loss(tv, View(None, emb(t)))) == pytest.approx(0.0, abs=1e-6)


def test_embedding_kd_gradients_reach_the_student_and_the_adapter_not_the_teacher(rng):
    t = tf.Variable(unit(rng.normal(size=(3, 8))))
    s = tf.Variable(unit(rng.normal(size=(3, 4))))
    term = build(EmbeddingKD(distance="l2"), View(None, emb(t.numpy())), View(None, emb(s.numpy())))
    with tf.GradientTape(persistent=True) as tape:
        value = term.loss(View(None, emb(t)), View(None, emb(s)))
    assert tape.gradient(value, t) is None
    g_s = tape.gradient(value, s).numpy()
    g_a = tape.gradient(value, term.adapter.kernel).numpy()
    assert np.isfinite(g_s).all() and np.abs(g_s).max() > 1e-4
    assert np.isfinite(g_a).all() and np.abs(g_a).max() > 1e-4
    assert [v.path for v in term.trainable_weights] == [term.adapter.kernel.path]


def test_embedding_kd_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match=r"EmbeddingKD: `distance` must be one of \('cosine', "
                                         r"'l2'\), got 'euclidean'"):
        EmbeddingKD(distance="euclidean")
    with pytest.raises(ValueError, match="`adapter` must be 'auto', 'always' or None, got 'conv'"):
        EmbeddingKD(adapter="conv")  # Hint's word for it is not EmbeddingKD's
    with pytest.raises(TypeError, match="EmbeddingKD: `student_layer` must be a layer name"):
        EmbeddingKD(student_layer="")
    with pytest.raises(TypeError, match="ExclusivityConsistencyKD: `teacher_layer` must be"):
        ECKD(teacher_layer=3)
    kt = lambda *shape: View(None, emb(keras.KerasTensor((None, *shape))))  # noqa: E731
    with pytest.raises(ValueError, match=r"D=4 and the teacher's D=8, and `adapter=None`.*"
                                         r"Use adapter='auto'"):
        EmbeddingKD(adapter=None).build_term(kt(8), kt(4))
    with pytest.raises(ValueError, match=r"EmbeddingKD: the student feature 'embedding' has "
                                         r"shape \(None, 4, 4, 8\); an embedding is \(batch, D\)"):
        EmbeddingKD().build_term(kt(8), kt(4, 4, 8))
    with pytest.raises(ValueError, match=r"the teacher feature 'emb' was not tapped \(available: "
                                         r"\['embedding'\]\)"):
        EmbeddingKD(teacher_layer="emb").build_term(kt(8), kt(8))
    with pytest.raises(ValueError, match="EmbeddingKD needs a teacher"):
        EmbeddingKD().build_term(None, kt(8))
    EmbeddingKD(adapter=None).build_term(kt(8), kt(8))  # equal widths need no adapter


# ---------------------------------------------------------------- EvaluationOrientedKD
@pytest.mark.parametrize("far,rank_weight", [(0.1, 1.0), (0.02, 0.0), (0.3, 4.0), (1.0, 1.0)])
def test_ekd_matches_numpy(faces, far, rank_weight):
    t, s, y, head = faces
    tv, sv = View(None, emb(t)), View(head, emb(s))
    term = build(EKD(far=far, rank_weight=rank_weight), tv, sv)
    np.testing.assert_allclose(float(term.loss(tv, sv, y)),
                               np_ekd(t, s, y, far=far, rank_weight=rank_weight), rtol=1e-5)


def test_ekd_matches_numpy_with_sample_weights_and_a_collapsed_student(faces, rng):
    t, s, y, head = faces
    w = rng.choice([0.0, 0.5, 1.0, 2.0], size=12).astype("float32")
    w[:2] = [1.0, 1.0]
    term = EKD(far=0.1)
    value = float(term.loss(View(None, emb(t)), View(head, emb(s)), y, w))
    np.testing.assert_allclose(value, np_ekd(t, s, y, w, far=0.1), rtol=1e-5)
    # A collapsed student accepts every pair: every negative becomes critical.
    collapsed = unit(np.ones((12, 8)) + 0.01 * rng.normal(size=(12, 8)))
    value = float(term.loss(View(None, emb(t)), View(head, emb(collapsed)), y))
    np.testing.assert_allclose(value, np_ekd(t, collapsed, y, far=0.1), rtol=1e-5)


def test_ekd_threshold_takes_ceil_far_times_the_negatives(rng):
    # 3 identities x 2: 3 positive and 12 negative pairs; far = 0.25 -> exactly 3 hard
    # negatives, 1/12 -> 1, 1e-6 -> still 1.
    y = np.repeat(np.arange(3), 2)
    t = unit(rng.normal(size=(6, 5)))
    s = unit(-t + 0.05 * rng.normal(size=(6, 5)))  # flipped: the student accepts few pairs
    head = np.zeros((6, 3), "float32")
    for far in (0.25, 1 / 12, 1e-6):
        value = float(EKD(far=far).loss(View(None, emb(t)), View(head, emb(s)), y))
        np.testing.assert_allclose(value, np_ekd(t, s, y, far=far), rtol=1e-5)
    head = np.zeros((10, 2), "float32")
    t, s = unit(rng.normal(size=(10, 5))), unit(rng.normal(size=(10, 5)))
    for n, far in ((6, 1 / 3), (10, 0.6)):  # 9 negatives, 25 negatives
        # float32's 0.6 * 25 is 15.000001: the slack keeps k at 15.
        y = np.repeat(np.arange(2), n // 2)
        value = float(EKD(far=far).loss(View(None, emb(t[:n])), View(head[:n], emb(s[:n])), y))
        np.testing.assert_allclose(value, np_ekd(t[:n], s[:n], y, far=far), rtol=1e-5)


@pytest.mark.parametrize("labels", [[0, 1, 2, 3], [2, 2, 2, 2], [1]],
                         ids=["no_positive_pair", "no_negative_pair", "one_sample"])
def test_ekd_degenerate_batches_are_finite_and_still_learn(rng, labels):
    y = np.array(labels)
    t = tf.constant(unit(rng.normal(size=(len(y), 6))))
    s = tf.Variable(unit(rng.normal(size=(len(y), 6))))
    head = np.zeros((len(y), 4), "float32")
    with tf.GradientTape() as tape:
        value = EKD().loss(View(None, emb(t)), View(head, emb(s)), y)
    grad = tape.gradient(value, s)
    assert np.isfinite(float(value)) and np.isfinite(grad.numpy()).all()
    np.testing.assert_allclose(float(value), np_ekd(t.numpy(), s.numpy(), y), rtol=1e-5,
                               atol=1e-7)
    if len(y) > 1:
        assert float(value) > 0 and np.abs(grad.numpy()).max() > 0
    # Weights that leave fewer than two samples leave no pair: 0, not NaN.
    w = np.eye(1, len(y), dtype="float32")[0]
    assert float(EKD().loss(View(None, emb(t)), View(head, emb(s)), y, w)) == 0.0


def test_ekd_gradients_reach_the_student_only_and_vanish_on_a_copy(faces):
    t, s, y, head = faces
    tv_t, sv_s = tf.Variable(t), tf.Variable(s)
    with tf.GradientTape(persistent=True) as tape:
        value = EKD().loss(View(None, emb(tv_t)), View(head, emb(sv_s)), y)
    assert tape.gradient(value, tv_t) is None
    g = tape.gradient(value, sv_s).numpy()
    assert np.isfinite(g).all() and np.abs(g).max() > 1e-4
    # A (scaled) copy of the teacher's embeddings has the teacher's similarities: 0.
    copy = float(EKD().loss(View(None, emb(t)), View(head, emb(3.0 * t)), y))
    assert copy == pytest.approx(0.0, abs=1e-6)


def test_ekd_compiles_under_xla_with_an_unknown_batch(faces):
    t, s, y, head = faces
    term = EKD(far=0.2)

    @tf.function(jit_compile=True, input_signature=[tf.TensorSpec((None, 16)),
                                                   tf.TensorSpec((None, 8)),
                                                   tf.TensorSpec((None, 4)),
                                                   tf.TensorSpec((None,), tf.int64)])
    def run(t, s, head, y):
        return term.loss(View(None, emb(t)), View(head, emb(s)), y)

    for n in (12, 7):
        np.testing.assert_allclose(float(run(t[:n], s[:n], head[:n], y[:n])),
                                   np_ekd(t[:n], s[:n], y[:n], far=0.2), rtol=1e-4)


def test_ekd_bad_arguments_and_inputs_name_the_fix(faces):
    t, s, y, head = faces
    for far in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"EvaluationOrientedKD: `far` must be in \(0, 1\], "
                                             rf"got {far}\. It is the false-accept rate"):
            EKD(far=far)
    with pytest.raises(ValueError, match="EvaluationOrientedKD: `rank_weight` must be a finite "
                                         "number >= 0"):
        EKD(rank_weight=-1.0)
    with pytest.raises(TypeError, match="`output` must be an index, a name or None"):
        EKD(output=1.5)
    kt = lambda *shape: keras.KerasTensor((None, *shape))  # noqa: E731
    with pytest.raises(ValueError, match=r"reads the student's output as the logits of its "
                                         r"cosine head \(batch, num_classes\), got shape None"):
        EKD().build_term(View(None, emb(kt(16))), View(None, emb(kt(8))))
    with pytest.raises(ValueError, match=r"the teacher feature 'embedding' has shape "
                                         r"\(None, 2, 16\); an embedding is \(batch, D\)"):
        EKD().build_term(View(None, emb(kt(2, 16))), View(kt(4), emb(kt(8))))
    with pytest.raises(ValueError, match="EvaluationOrientedKD needs the ground-truth labels"):
        EKD().loss(View(None, emb(t)), View(head, emb(s)), None)
    assert EKD.requires_labels and ECKD.requires_labels and not EmbeddingKD.requires_labels


# ---------------------------------------------------------------- ExclusivityConsistencyKD
@pytest.mark.parametrize("distance", ["l2", "cosine"])
def test_eckd_matches_numpy_with_sample_weights(rng, distance):
    y = np.array([0, 1, 2, 1, 0])
    t = unit(rng.normal(size=(5, 16)))
    s = unit(rng.normal(size=(5, 8)))
    cosines = rng.uniform(-1.0, 1.0, size=(5, 3)).astype("float32")
    cosines[0, 0] = 1.3  # past the cosine range: clipped
    w = np.array([1.0, 2.0, 0.0, 0.5, 1.0], "float32")
    tv, sv = View(cosines, emb(t)), View(None, emb(s))
    term = build(ECKD(distance=distance), tv, View(np.zeros((5, 3), "float32"), emb(s)))
    per = np_eckd(t, s, term.adapter.kernel.numpy(), cosines, y, distance)
    np.testing.assert_allclose(np.asarray(term.compute(tv, sv, y)), per, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(term.loss(tv, sv, y, w)), keras_weighted(per, w), rtol=1e-5)


def test_eckd_weighs_the_samples_the_teacher_finds_hard_more(rng):
    t = unit(rng.normal(size=(1, 6)))
    s = unit(rng.normal(size=(1, 6)))
    loss = lambda c: float(ECKD().loss(View(np.array([[c, 0.0]], "float32"), emb(t)),  # noqa: E731
                                       View(None, emb(s)), np.array([0])))
    d = float(EmbeddingKD(distance="l2").loss(View(None, emb(t)), View(None, emb(s))))
    assert loss(1.0) == pytest.approx(d, rel=1e-5)          # easy: weight 1
    assert loss(0.0) == pytest.approx(1.5 * d, rel=1e-5)
    assert loss(-1.0) == pytest.approx(2.0 * d, rel=1e-5)   # opposite its class centre
    assert loss(64.0) == pytest.approx(d, rel=1e-5)         # a scaled head saturates


def test_eckd_gradients_reach_the_student_not_the_teacher_head(rng):
    y = np.array([0, 1, 1])
    t = tf.Variable(unit(rng.normal(size=(3, 8))))
    cosines = tf.Variable(rng.uniform(-1, 1, size=(3, 2)).astype("float32"))
    s = tf.Variable(unit(rng.normal(size=(3, 4))))
    term = build(ECKD(), View(cosines.numpy(), emb(t.numpy())), View(None, emb(s.numpy())))
    with tf.GradientTape(persistent=True) as tape:
        value = term.loss(View(cosines, emb(t)), View(None, emb(s)), y)
    assert tape.gradient(value, t) is None and tape.gradient(value, cosines) is None
    g = tape.gradient(value, s).numpy()
    assert np.isfinite(g).all() and np.abs(g).max() > 1e-4
    assert np.abs(tape.gradient(value, term.adapter.kernel).numpy()).max() > 1e-4


def test_eckd_needs_the_teachers_cosine_head():
    kt = lambda *shape: keras.KerasTensor((None, *shape))  # noqa: E731
    with pytest.raises(ValueError, match=r"ExclusivityConsistencyKD reads the teacher's output "
                                         r"as the logits of its cosine head \(batch, "
                                         r"num_classes\), got shape \(None, 4, 4, 5\)"):
        ECKD().build_term(View(kt(4, 4, 5), emb(kt(8))), View(None, emb(kt(8))))
    with pytest.raises(ValueError, match="ExclusivityConsistencyKD needs a teacher"):
        ECKD().build_term(None, View(None, emb(kt(8))))
    with pytest.raises(ValueError, match="ExclusivityConsistencyKD: `distance` must be one of"):
        ECKD(distance="kl")
    term = ECKD(output="cosines")
    term.build_term(View({"cosines": kt(5), "embedding": kt(8)}, emb(kt(8))),
                    View(None, emb(kt(4))))
    assert term.adapter.kernel.shape == (4, 8)


# ---------------------------------------------------------------- registry and configs
def test_terms_are_registered_by_readable_names_and_export():
    terms = tfkd.knowledge.get_list("embedding_kd,ekd:far=0.1")
    assert [type(t) for t in terms] == [EmbeddingKD, EKD] and terms[1].far == 0.1
    for name, cls in (("evaluation_oriented_kd", EKD), ("EvaluationOrientedKD", EKD),
                      ("eckd", ECKD), ("exclusivity_consistency_kd", ECKD),
                      ("embedding_kd", EmbeddingKD), ("EmbeddingKD", EmbeddingKD)):
        assert type(tfkd.knowledge.get(name)) is cls
        assert getattr(tfkd.knowledge, cls.__name__) is cls
    term = tfkd.knowledge.get("embedding_kd:distance=l2,adapter=none,student_layer=emb_s")
    assert (term.distance, term.adapter_mode, term.student_layer) == ("l2", None, "emb_s")
    assert tfkd.knowledge.get("ekd:far=1e-3,rank_weight=0").rank_weight == 0.0


@pytest.mark.parametrize("term", [
    EmbeddingKD("s_emb", "t_emb", distance="l2", adapter="always", weight=0.5, name="emb"),
    EmbeddingKD(adapter=None),
    EKD("s_emb", far=0.01, rank_weight=3.0, output="head", weight=2.0),
    ECKD(distance="cosine", adapter=None, output=1),
], ids=lambda t: t.name)
def test_get_config_round_trips(term):
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(term))
    assert type(again) is type(term) and again.get_config() == term.get_config()
    assert type(term).from_config(term.get_config()).get_config() == term.get_config()
    assert tfkd.knowledge.get(keras.saving.serialize_keras_object(term)).name == term.name


# ---------------------------------------------------------------- on face models' taps
def face_model(d, name, classes=4, seed=0):
    """Input -> Dense -> L2 normalisation named "embedding" -> cosine-style head (no bias)."""
    init = keras.initializers.GlorotUniform(seed=seed)
    inputs = keras.Input((10,))
    h = keras.layers.Dense(d, kernel_initializer=init, name="proj")(inputs)
    e = keras.layers.UnitNormalization(name="embedding")(h)
    logits = keras.layers.Dense(classes, use_bias=False, kernel_initializer=init, name="head")(e)
    return keras.Model(inputs, logits, name=name)


@pytest.fixture(scope="module")
def models():
    return face_model(16, "teacher", seed=1), face_model(8, "student", seed=2)


def tap_views(term, teacher, student, x=None):
    """The views the Distiller gives `term`: symbolic (x None) or of a forward pass of x."""
    t_tap = Tap(teacher, term.teacher_features, side="teacher")
    s_tap = Tap(student, term.student_features, side="student")
    if x is None:
        return t_tap.symbolic_view(), s_tap.symbolic_view()
    return t_tap(x), s_tap(x)


@pytest.mark.parametrize("make,reference", [
    (lambda: tfkd.knowledge.RelationalKD(distance=1.0, angle=2.0, student_layer="embedding",
                                         teacher_layer="embedding"),
     lambda t, s, w: np_rkd(t, s, w, 1.0, 2.0)),
    (lambda: tfkd.knowledge.RelationalKD(distance=25.0, angle=50.0, student_layer="embedding",
                                         teacher_layer="embedding"),
     lambda t, s, w: np_rkd(t, s, w, 25.0, 50.0)),
    (lambda: tfkd.knowledge.SimilarityPreserving("embedding", "embedding"),
     # SP counts a sample of weight w like w copies: integer weights repeat rows.
     lambda t, s, w: np_sp(np.repeat(t, w.astype(int), 0), np.repeat(s, w.astype(int), 0))),
], ids=["rkd", "rkd_paper_weights", "similarity"])
def test_relation_terms_on_embedding_taps(models, rng, make, reference):
    teacher, student = models
    term = make()
    t_sym, s_sym = tap_views(term, teacher, student)
    assert t_sym.features["embedding"].shape == (None, 16)
    term.build_term(t_sym, s_sym)
    t, s = unit(rng.normal(size=(6, 16))), unit(rng.normal(size=(6, 8)))
    w = np.array([1.0, 2.0, 0.0, 1.0, 1.0, 3.0], "float32")
    for weights in (None, w):
        ref = reference(t, s, np.ones(6) if weights is None else weights)
        value = float(term.loss(View(None, emb(t)), View(None, emb(s)), sample_weight=weights))
        np.testing.assert_allclose(value, ref, rtol=1e-4)
    # Through the taps of a forward pass: the same numbers on the tapped embeddings.
    t_view, s_view = tap_views(term, teacher, student, rng.normal(size=(6, 10)).astype("float32"))
    t_emb, s_emb = t_view.features["embedding"].numpy(), s_view.features["embedding"].numpy()
    np.testing.assert_allclose(np.linalg.norm(t_emb, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(float(term.loss(t_view, s_view)),
                               reference(t_emb, s_emb, np.ones(6)), rtol=1e-4)


@pytest.mark.parametrize("term", [EmbeddingKD(), EKD(far=0.2), ECKD()], ids=lambda t: t.name)
def test_embedding_terms_build_on_face_model_taps_and_match_numpy(models, rng, term):
    teacher, student = models
    term.build_term(*tap_views(term, teacher, student))
    x = rng.normal(size=(8, 10)).astype("float32")
    y = np.array([0, 0, 1, 1, 2, 2, 3, 0])
    t_view, s_view = tap_views(term, teacher, student, x)
    t, s = t_view.features["embedding"].numpy(), s_view.features["embedding"].numpy()
    value = float(term.loss(t_view, s_view, y))
    if isinstance(term, EKD):
        expected = np_ekd(t, s, y, far=0.2)
    else:
        kernel = term.adapter.kernel.numpy()
        per = (np_eckd(t, s, kernel, t_view.outputs.numpy(), y) if isinstance(term, ECKD)
               else np_embedding_distance(t, s, kernel, "cosine"))
        expected = per.mean()
    np.testing.assert_allclose(value, expected, rtol=1e-4)


def test_a_distiller_trains_the_adapter_and_exports_a_plain_student(models, rng):
    teacher, _ = models
    student = face_model(8, "student_fit", seed=3)
    terms = [EmbeddingKD(), EKD(), ECKD(weight=0.5)]
    distiller = tfkd.Distiller(student, teacher, knowledge=terms, student_loss_weight=0.1)
    distiller.compile(keras.optimizers.SGD(0.1),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    kernel = terms[0].adapter.kernel.numpy().copy()
    x = rng.normal(size=(16, 10)).astype("float32")
    y = np.repeat(np.arange(4), 4)
    history = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    for name in ("embedding_kd_loss", "ekd_loss", "eckd_loss"):
        assert np.isfinite(history[name]).all(), history
    assert not np.allclose(terms[0].adapter.kernel.numpy(), kernel)  # trained with the student
    adapters = {id(v) for t in terms for v in t.trainable_weights}
    assert len(adapters) == 2 and adapters <= {id(v) for v in distiller.trainable_weights}
    assert adapters.isdisjoint(id(v) for v in distiller.student.weights)  # never exported
