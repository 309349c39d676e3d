"""Embedding knowledge (face recognition, person / vehicle re-identification): what the
teacher's embedding space says about each sample, and about the pairs that a verification
metric looks at.

Conventions of the models these terms serve: the layer tapped by name (`"embedding"` by
default) outputs an L2-normalised embedding `(batch, D)` (D = 64..256; the teacher's D may
differ from the student's), and the model's output is the logits of a training-only cosine
head `(batch, num_classes)`: scale-free cosines of the embedding to the class centres. The
labels `y` are integer identities `(batch,)`. The terms normalise the embeddings again (a
no-op on a normalised tap, and the right thing on a raw one), see tensors only, and do their
math in float32.

- `EmbeddingKD`: the student's embedding, through a learned linear map when the widths
  differ, matches the teacher's (cosine or L2 on the unit sphere).
- `EvaluationOrientedKD` (EKD): the student keeps the teacher's similarities on the pairs
  that decide the verification metric at a false-accept rate: every positive pair and the
  hard negatives around the teacher's threshold.
- `ExclusivityConsistencyKD` (EC-KD, its consistency half): embedding matching that weighs
  the samples the teacher finds hard more.
- `RelationalKD` and `SimilarityPreserving` (`tfkd.knowledge.relation`) work on `(batch, D)`
  embedding taps as they are: `student_layer="embedding", teacher_layer="embedding"`.
"""
import keras
import numpy as np
from keras import ops

from tfkd.knowledge import base
from tfkd.knowledge.base import Knowledge
from tfkd.knowledge.base import View
from tfkd.knowledge.base import as_float32
from tfkd.knowledge.base import check_interval
from tfkd.knowledge.base import check_non_negative
from tfkd.knowledge.base import labels_to_one_hot
from tfkd.knowledge.dense import _l2_normalise
from tfkd.knowledge.feature import Hint
from tfkd.knowledge.feature import _check_layer_name
from tfkd.knowledge.feature import _feature

_DISTANCES = ("cosine", "l2")
# EmbeddingKD's adapter choices -> Hint's (the adapter mechanism is Hint's).
_ADAPTERS = {"auto": "auto", "always": "conv", None: None}
_NO_THRESHOLD = 2.0  # above any cosine: nothing is accepted (a batch without negative pairs)


def _unit(x):
    x = np.asarray(x, "float64")
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _embedding_inputs(rng, batch):
    """Embeddings of a face / re-id model pair and their cosine heads, and identity labels.

    The teacher's embeddings (tapped at "embedding") are 8-D, the student's 4-D (the adapter
    runs), both L2-normalised and noisy around per-identity directions; each side's outputs are
    the cosines `(batch, 5)` of its embeddings to 5 unit class centres; the labels are the
    identities `arange(batch) % 5` (a batch of 6 has a positive pair).
    """
    k = base.EXAMPLE_CLASSES
    y = (np.arange(batch) % k).astype("int64")
    centres_t, centres_s = _unit(rng.normal(size=(k, 8))), _unit(rng.normal(size=(k, 4)))
    t = _unit(centres_t[y] + 0.6 * rng.normal(size=(batch, 8)))
    s = _unit(t[:, :4] + 0.5 * rng.normal(size=(batch, 4)))
    teacher = View((t @ centres_t.T).astype("float32"), {"embedding": t.astype("float32")})
    student = View((s @ centres_s.T).astype("float32"), {"embedding": s.astype("float32")})
    return teacher, student, y


class _EmbeddingExamples:
    """The example inputs of the embedding terms (`example_views`, the contract tests)."""

    example_inputs = "embedding"

    @classmethod
    def example_views(cls, batch=6, seed=0):
        """Small random inputs on which `cls(**cls.example_args)` works.

        Returns `(teacher, student, y_true)`: `View`s of an 8-D teacher and a 4-D student
        embedding (tapped as "embedding") with the cosines of their heads as outputs, and
        identity labels; see `_embedding_inputs`.

        Example:

        >>> import tfkd
        >>> teacher, student, y = tfkd.knowledge.EmbeddingKD.example_views(batch=2)
        >>> teacher.features["embedding"].shape, student.features["embedding"].shape, y.shape
        ((2, 8), (2, 4), (2,))
        """
        return _embedding_inputs(np.random.default_rng(seed), batch)


def _check_embedding(owner, x, side, layer):
    if len(x.shape) != 2 or x.shape[-1] is None:
        raise ValueError(
            f"{owner}: the {side} feature {layer!r} has shape {tuple(x.shape)}; an embedding is "
            "(batch, D) with a known D. Tap the embedding layer (the L2-normalised vector "
            f"before the head) with `{side}_layer=`, or pool / flatten the map in the model."
        )
    return x.shape[-1]


def _check_head(owner, view, side, selector):
    """The symbolic cosine-head output of one side; returns its number of classes."""
    out = view.output(selector)
    if out is None or len(out.shape) != 2 or out.shape[-1] is None:
        shape = None if out is None else tuple(out.shape)
        raise ValueError(
            f"{owner} reads the {side}'s output as the logits of its cosine head (batch, "
            f"num_classes), got shape {shape}. Point `output=` at the head's output of a "
            "multi-output model, or give the model its (training-only) cosine head."
        )
    return out.shape[-1]


def _check_output_selector(owner, output):
    if output is not None and not isinstance(output, (int, str)):
        raise TypeError(f"{owner}: `output` must be an index, a name or None, got {output!r}.")
    return output


class EmbeddingKD(_EmbeddingExamples, Hint):
    """Embedding matching: the student's embedding, through a learned linear map, matches the
    teacher's.

    With student embedding `s_i`, teacher embedding `t_i` (the tapped layers, `(batch, D)`)
    and the adapter `a` (a learned linear map `D_s -> D_t`, or the identity):

        L_i = 1 - cos(a(s_i), t_i)                            (distance="cosine", default)
        L_i = || a(s_i) / |a(s_i)| - t_i / |t_i| ||^2          (distance="l2")

    On the unit sphere the two are proportional (`l2 = 2 * cosine`): "l2" is the
    feature-consistency form face-recognition papers write, at twice the weight. The teacher
    is a target, never differentiated.

    This is FitNets' hint on the embedding (a `Hint` subclass: its adapter mechanism, created
    in `build_term`, float32, trained with the student by the Distiller and never exported
    with it), with a bias-free `Dense(D_t, use_bias=False)` as the adapter: a purely linear
    map, so that a constant offset cannot stand in for the student's embedding. `adapter`:
      - `"auto"` (default): only when `D_s != D_t`; equal widths are compared directly.
      - `"always"`: also for equal widths (a learned rotation / mixing of the student's axes).
      - `None`: never; the widths must then match.

    Args:
        student_layer: name of the student's embedding layer.
        teacher_layer: name of the teacher's embedding layer.
        distance: "cosine" or "l2" (see above).
        adapter: "auto", "always" or None.
        weight: multiplier of this term (>= 0).
        name: metric prefix (`embedding_kd_loss`).

    Example:

    >>> import numpy as np, keras, tfkd
    >>> from tfkd.knowledge import View
    >>> t = View(None, {"embedding": np.array([[1, 0], [0, 1]], "float32")})
    >>> s = View(None, {"embedding": np.array([[1, 0], [1, 0]], "float32")})
    >>> float(tfkd.knowledge.EmbeddingKD().loss(t, s))     # (0 + 1) / 2
    0.5
    >>> term = tfkd.knowledge.EmbeddingKD()                 # a 64-D student, a 128-D teacher
    >>> term.build_term(View(None, {"embedding": keras.KerasTensor((None, 128))}),
    ...                 View(None, {"embedding": keras.KerasTensor((None, 64))}))
    >>> [tuple(w.shape) for w in term.trainable_weights]    # the adapter's kernel, no bias
    [(64, 128)]
    """

    default_name = "embedding_kd"
    example_args = {}

    def __init__(self, student_layer="embedding", teacher_layer="embedding", distance="cosine",
                 adapter="auto", weight=1.0, name=None, **kwargs):
        owner = type(self).__name__
        _check_layer_name(owner, "student_layer", student_layer)
        _check_layer_name(owner, "teacher_layer", teacher_layer)
        if distance not in _DISTANCES:
            raise ValueError(
                f"{owner}: `distance` must be one of {_DISTANCES}, got {distance!r}: 'cosine' "
                "is 1 - cos(s, t), 'l2' the squared distance of the unit embeddings.")
        if not isinstance(adapter, (str, type(None))) or adapter not in _ADAPTERS:
            raise ValueError(
                f"{owner}: `adapter` must be 'auto', 'always' or None, got {adapter!r}: 'auto' "
                "adds a learned linear map only when the embedding widths differ, 'always' "
                "adds it anyway, None never does.")
        super().__init__(student_layer, teacher_layer, adapter=_ADAPTERS[adapter],
                         weight=weight, name=name, **kwargs)
        self.distance = distance

    def build_term(self, teacher, student):
        owner = type(self).__name__
        t = _feature(teacher, self.teacher_layer, "teacher", owner)
        s = _feature(student, self.student_layer, "student", owner)
        d_t = _check_embedding(owner, t, "teacher", self.teacher_layer)
        d_s = _check_embedding(owner, s, "student", self.student_layer)
        if self.adapter_mode is None and d_t != d_s:
            raise ValueError(
                f"{owner}: the student's embedding has D={d_s} and the teacher's D={d_t}, and "
                "`adapter=None` adds no projection. Use adapter='auto' (a learned linear "
                "map, trained with the student and never exported) or embeddings of equal size.")
        needs = self.adapter_mode == "conv" or d_t != d_s
        if needs and self.adapter is None:
            # Made here rather than by Hint.build_term for its `use_bias=False`; Hint then
            # checks the pair and keeps this adapter.
            self.adapter = keras.layers.Dense(d_t, use_bias=False, dtype="float32",
                                              name=f"{self.name}_adapter")
            self.adapter.build(tuple(s.shape))
        super().build_term(teacher, student)

    def _distances(self, teacher, student):
        """Per-sample distance (batch,) of the (adapted) student embedding to the teacher's."""
        owner = type(self).__name__
        t = ops.stop_gradient(as_float32(_feature(teacher, self.teacher_layer, "teacher", owner)))
        s = as_float32(_feature(student, self.student_layer, "student", owner))
        if self.adapter is not None:
            s = self.adapter(s)
        t, s = _l2_normalise(t), _l2_normalise(s)
        if self.distance == "cosine":
            return 1.0 - ops.sum(s * t, axis=-1)
        return ops.sum(ops.square(s - t), axis=-1)

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        return self._distances(teacher, student)

    def get_config(self):
        config = super().get_config()
        config.update(adapter={v: k for k, v in _ADAPTERS.items()}[self.adapter_mode],
                      distance=self.distance)
        return config


class EvaluationOrientedKD(_EmbeddingExamples, Knowledge):
    """EKD: the student keeps the teacher's similarities on the pairs that decide the
    verification metric at a false-accept rate.

    Paper: Y. Huang, J. Wu, X. Xu, S. Ding, "Evaluation-oriented Knowledge Distillation for
    Deep Face Recognition", CVPR 2022.

    In the batch, with unit embeddings `t_i`, `s_i` (any widths: only similarities are
    compared), sample weights `w_i` (1 when none) and the pairs `i < j` of samples of
    non-zero weight:

        S^t_ij = cos(t_i, t_j),  S^s_ij = cos(s_i, s_j)
        P   = pairs of the same identity,  N = pairs of different identities
        tau = the k-th largest S^t over N, k = max(1, ceil(far * |N|))
              (the teacher's threshold at FAR = far within the batch)
        C   = P  +  {(i, j) in N : S^t_ij >= tau  or  S^s_ij >= tau}     (critical pairs)
        r_ij = 1 + rank_weight  if [S^s_ij >= tau] != [S^t_ij >= tau]  else 1
        L   = sum_C w_i w_j r_ij (S^s_ij - S^t_ij)^2 / sum_C w_i w_j r_ij

    Every positive pair counts (the true-accept rate looks at all of them); of the negative
    pairs, those at or above the teacher's threshold (the teacher's false accepts, the top
    `ceil(far * |N|)` by teacher similarity) and those the student would accept at that
    threshold (its false accepts: the pairs that make its FAR differ from the teacher's).
    A pair that the two models decide differently at `tau` (accept vs. reject: its rank
    against the threshold is wrong) weighs `1 + rank_weight`. A batch without positive pairs
    gives the mean over the hard negatives, one without negative pairs (no threshold: every
    weight is 1) the mean over the positives, one without pairs 0; never NaN.

    Labels are identity indices of the student's cosine head (its output `(batch,
    num_classes)`, picked with `output=` on a multi-output model), checked like the labels of
    every term (a label outside [0, num_classes) raises, and makes the loss NaN under XLA).

    Deviations from the paper and its code (TFace `recognition/tasks/ekd`), for a stateless
    term that sees one batch:
      - One threshold, the teacher's at `far`, per batch; the paper uses thresholds at
        several FPRs (1e-1 .. 1e-6 of the negative pairs), kept as moving averages across
        batches (momentum 0.01), one set per model.
      - The loss regresses the similarities, with the extra weight on pairs decided the
        other way; the paper's rank-based loss compares soft counts of the thresholds each
        pair passes (a sigmoid of temperature 0.01 per threshold, the student against its
        own thresholds), which leaves absolute similarities free.
      - Hard negatives are the teacher's and the student's false accepts at `tau`; the
        paper's code takes the 2000 negatives of highest student similarity.
      - One weighted mean over positive and negative critical pairs; the code weighs the
        two losses 0.02 and 0.01.

    Args:
        student_layer / teacher_layer: names of the embedding layers.
        far: the false-accept rate whose teacher threshold picks the hard negatives, in
            (0, 1] (1: every negative pair is critical).
        rank_weight: extra weight (>= 0) of a pair the student decides unlike the teacher.
        output: which student output is the cosine head (for the label check), on a
            multi-output model.
        weight: multiplier of this term (>= 0).
        name: metric prefix (`ekd_loss`).

    Example:

    >>> import numpy as np, tfkd
    >>> from tfkd.knowledge import View
    >>> rng = np.random.default_rng(0)
    >>> unit = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype("float32")
    >>> y = np.array([0, 0, 1, 1, 2, 2])
    >>> t = unit(rng.normal(size=(3, 16))[y] + 0.3 * rng.normal(size=(6, 16)))
    >>> head = np.zeros((6, 3), "float32")                   # the student's cosine head
    >>> term = tfkd.knowledge.EvaluationOrientedKD(far=0.1)
    >>> float(term.loss(View(None, {"embedding": t}), View(head, {"embedding": t}), y))
    0.0
    >>> s = unit(t[:, :8] + rng.normal(size=(6, 8)))         # a narrower, noisier student
    >>> float(term.loss(View(None, {"embedding": t}), View(head, {"embedding": s}), y)) > 0
    True
    """

    default_name = "ekd"
    requires_labels = True
    example_args = {}

    def __init__(self, student_layer="embedding", teacher_layer="embedding", far=0.1,
                 rank_weight=1.0, output=None, weight=1.0, name=None, **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)
        owner = type(self).__name__
        self.student_layer = _check_layer_name(owner, "student_layer", student_layer)
        self.teacher_layer = _check_layer_name(owner, "teacher_layer", teacher_layer)
        self.far = check_interval(
            "far", far, owner, 0.0, 1.0, low_open=True,
            why=" It is the false-accept rate (e.g. 0.1, 1e-3) whose teacher threshold picks "
                "the hard negative pairs.")
        self.rank_weight = check_non_negative("rank_weight", rank_weight, owner)
        self.output_selector = _check_output_selector(owner, output)

    def build_term(self, teacher, student):
        owner = type(self).__name__
        for view, layer, side in ((teacher, self.teacher_layer, "teacher"),
                                  (student, self.student_layer, "student")):
            _check_embedding(owner, _feature(view, layer, side, owner), side, layer)
        _check_head(owner, student, "student", self.output_selector)
        super().build_term(teacher, student)

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        owner = type(self).__name__
        t = ops.stop_gradient(as_float32(_feature(teacher, self.teacher_layer, "teacher", owner)))
        s = as_float32(_feature(student, self.student_layer, "student", owner))
        t, s = _l2_normalise(t), _l2_normalise(s)
        sim_t = ops.matmul(t, ops.transpose(t))
        sim_s = ops.matmul(s, ops.transpose(s))

        num_classes = ops.shape(student.output(self.output_selector))[-1]
        one_hot = labels_to_one_hot(y_true, num_classes, owner)
        poison = 0.0 * ops.sum(one_hot)  # NaN when a label is out of range (XLA drops the check)
        identity = ops.argmax(one_hot, axis=-1)
        same = ops.cast(identity[:, None] == identity[None, :], "float32")

        batch = ops.shape(t)[0]
        w = (ops.ones((batch,), dtype="float32") if sample_weight is None
             else ops.reshape(ops.cast(sample_weight, "float32"), (-1,)))
        index = ops.arange(batch)
        upper = ops.cast(index[:, None] < index[None, :], "float32")  # pairs i < j
        present = ops.cast(w > 0, "float32")
        pairs = upper * present[:, None] * present[None, :]
        positive, negative = pairs * same, pairs * (1.0 - same)

        # The teacher's threshold: its k-th most similar negative pair, k = ceil(far * |N|)
        # (a 1e-6 relative slack, so that 0.1 * 30 negatives is 3, not 4).
        n_neg = ops.sum(negative)
        k = ops.maximum(ops.ceil(self.far * n_neg * (1.0 - 1e-6)), 1.0)
        ranked = -ops.sort(-ops.reshape(ops.where(negative > 0, sim_t, -3.0), (-1,)))
        tau = ops.take(ranked, ops.cast(k, "int32") - 1)
        tau = ops.where(n_neg > 0, tau, _NO_THRESHOLD)

        t_accepts = ops.cast(ops.stop_gradient(sim_t) >= tau, "float32")
        s_accepts = ops.cast(ops.stop_gradient(sim_s) >= tau, "float32")
        hard = negative * ops.maximum(t_accepts, s_accepts)
        disagree = ops.abs(t_accepts - s_accepts)
        pair_weight = ((positive + hard) * w[:, None] * w[None, :]
                       * (1.0 + self.rank_weight * disagree))
        loss = ops.divide_no_nan(ops.sum(pair_weight * ops.square(sim_s - sim_t)),
                                 ops.sum(pair_weight))
        return loss + poison

    def get_config(self):
        config = super().get_config()
        config.update(student_layer=self.student_layer, teacher_layer=self.teacher_layer,
                      far=self.far, rank_weight=self.rank_weight, output=self.output_selector)
        return config


class ExclusivityConsistencyKD(EmbeddingKD):
    """EC-KD's hardness-aware feature consistency: embedding matching that weighs the samples
    the teacher finds hard more.

    Paper: X. Wang, T. Fu, S. Liao, S. Wang, Z. Lei, T. Mei, "Exclusivity-Consistency
    Regularized Knowledge Distillation for Face Recognition", ECCV 2020.

    With the embedding distance `d_i` of `EmbeddingKD` (by default "l2", the squared distance
    of the unit embeddings: the feature consistency of face-recognition KD; through the
    adapter when the widths differ) and the teacher's cosine to the centre of the sample's own class,
    `c_i = cos_t(i, y_i)`, read from the teacher's cosine-head output at the label (clipped
    to [-1, 1]):

        h_i = (1 - c_i) / 2                      (the teacher's hardness of sample i, in [0, 1])
        L_i = (1 + h_i) d_i

    An easy sample (`c_i = 1`) counts once, one the teacher puts opposite its class centre
    (`c_i = -1`) twice; the weights are targets, never differentiated. The teacher's output
    must be the scale-free cosines (a head that multiplies them by a scale `s` would saturate
    the clipping): point `output=` at them on a multi-output teacher.

    The paper re-weights the feature consistency by the hardness of each sample as the
    teacher sees it; its exact weighting could not be checked here (the paper's text was not
    reachable), so this weight, linear in the teacher's cosine and bounded in [1, 2], is
    this library's choice, not the paper's formula.

    The other half of EC-KD, the position-aware weight exclusivity (diverse filters of a
    layer, for the face classifier: diverse class centres), acts on the student's weights,
    not on the tensors a knowledge term sees: it is a regulariser of the student's cosine
    head, `tfkd.students.embedding.CosineHead(exclusivity=...)`. Use the two together for
    the paper's method.

    Args:
        student_layer / teacher_layer: names of the embedding layers.
        distance: "l2" (default, the feature consistency) or "cosine" (half of it).
        adapter: "auto", "always" or None, as in `EmbeddingKD`.
        output: which teacher output is its cosine head, on a multi-output teacher.
        weight: multiplier of this term (>= 0).
        name: metric prefix (`eckd_loss`).

    Example:

    >>> import numpy as np, tfkd
    >>> from tfkd.knowledge import View
    >>> cosines = np.array([[1.0, 0.0], [0.0, -1.0]], "float32")  # easy sample, hard sample
    >>> t = View(cosines, {"embedding": np.array([[1, 0], [0, 1]], "float32")})
    >>> s = View(None, {"embedding": np.array([[0, 1], [1, 0]], "float32")})
    >>> term = tfkd.knowledge.ExclusivityConsistencyKD()
    >>> term.compute(t, s, np.array([0, 1])).numpy()            # d = 2 each, weights 1 and 2
    array([2., 4.], dtype=float32)
    """

    default_name = "eckd"
    requires_labels = True
    example_args = {}

    def __init__(self, student_layer="embedding", teacher_layer="embedding", distance="l2",
                 adapter="auto", output=None, weight=1.0, name=None, **kwargs):
        super().__init__(student_layer, teacher_layer, distance=distance, adapter=adapter,
                         weight=weight, name=name, **kwargs)
        self.output_selector = _check_output_selector(type(self).__name__, output)

    def build_term(self, teacher, student):
        owner = type(self).__name__
        if teacher is None:
            raise ValueError(f"{owner} needs a teacher: pass `teacher=` to the Distiller.")
        _check_head(owner, teacher, "teacher", self.output_selector)
        super().build_term(teacher, student)

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        owner = type(self).__name__
        cosines = ops.stop_gradient(as_float32(teacher.output(self.output_selector)))
        one_hot = labels_to_one_hot(y_true, ops.shape(cosines)[-1], owner)
        own = ops.sum(one_hot * ops.clip(cosines, -1.0, 1.0), axis=-1)
        return (1.0 + 0.5 * (1.0 - own)) * self._distances(teacher, student)

    def get_config(self):
        config = super().get_config()
        config.update(output=self.output_selector)
        return config
