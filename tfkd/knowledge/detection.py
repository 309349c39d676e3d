"""Object-detection knowledge: what an SSD teacher says per anchor, per box and per feature cell.

The detector contract (`tfkd.students.ssd_mobile`, `tfkd.Anchors`): each side's outputs are a
dict `class_logits` (batch, anchors, classes) of sigmoid logits (no background column) and
`box_regression` (batch, anchors, 4), SSD-encoded against the anchors; neck features are
tapped by name (`p4`, `p5`, `p6`: strides 16, 32, 64). The labels are what `Anchors.encoder`
gives, stacked: `y = {"class_logits": one-hot (all zero: no object), "box_regression":
encoded boxes}` and per-anchor `sample_weight = {"class_logits": ..., "box_regression": ...}`.

Positive anchors are those of `sample_weight["box_regression"] > 0` when the encoder's weights
are given, else those whose one-hot row holds a class (max > 0.5): the same anchors. Each term
returns one loss per image, normalised like RetinaNet's focal loss where it sums over anchors
(divided by the image's number of positive anchors, at least 1). `sample_weight` may be:

- the encoder's per-anchor dict: read for the positives; each image then counts once (the
  batch loss is the mean over images, the encoder's weights already normalise per image);
- Keras' per-image weights `(batch,)`: `sum(loss_i * w_i) / batch`, as every term;
- None: the mean over images.

Math is float32; teacher-side masks and selections carry no gradient.
"""
import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tfkd.anchors import Anchors
from tfkd.knowledge.base import Knowledge
from tfkd.knowledge.base import as_float32
from tfkd.knowledge.base import check_count
from tfkd.knowledge.base import check_interval
from tfkd.knowledge.base import check_non_negative
from tfkd.knowledge.base import check_number
from tfkd.knowledge.base import check_positive
from tfkd.knowledge.feature import _check_layer_name
from tfkd.knowledge.feature import _feature
from tfkd.knowledge.feature import _resize_like

CLASS_OUTPUT = "class_logits"
BOX_OUTPUT = "box_regression"
LEVELS = ("p4", "p5", "p6")  # ssd_mobile's neck taps at strides 16, 32, 64


# --------------------------------------------------------------------------------------------
# Shared plumbing: the two heads, the labels, per-image reduction.


def _heads(view, side, owner):
    """(class_logits, box_regression) of a detector's View, or an error that says what is wrong."""
    if view is None:
        raise ValueError(f"{owner} needs a teacher: pass `teacher=` to the Distiller.")
    outs = view.outputs
    if not isinstance(outs, dict) or CLASS_OUTPUT not in outs or BOX_OUTPUT not in outs:
        got = sorted(outs) if isinstance(outs, dict) else type(outs).__name__
        raise ValueError(
            f"{owner}: the {side} must be a detector whose outputs are a dict with "
            f"{CLASS_OUTPUT!r} (batch, anchors, classes) and {BOX_OUTPUT!r} (batch, anchors, 4), "
            f"as tfkd.students.ssd_mobile returns; got {got}.")
    return outs[CLASS_OUTPUT], outs[BOX_OUTPUT]


def _check_heads(view, side, owner):
    cls, box = _heads(view, side, owner)
    if len(cls.shape) != 3 or len(box.shape) != 3 or box.shape[-1] not in (None, 4):
        raise ValueError(
            f"{owner}: the {side}'s {CLASS_OUTPUT!r} must be (batch, anchors, classes) and its "
            f"{BOX_OUTPUT!r} (batch, anchors, 4); got {tuple(cls.shape)} and {tuple(box.shape)}.")
    if None not in (cls.shape[1], box.shape[1]) and cls.shape[1] != box.shape[1]:
        raise ValueError(
            f"{owner}: the {side}'s heads disagree on the number of anchors: {CLASS_OUTPUT!r} "
            f"has {cls.shape[1]}, {BOX_OUTPUT!r} {box.shape[1]}.")
    return cls, box


def _same_anchors(owner, t_cls, s_cls):
    n_t, n_s = t_cls.shape[1], s_cls.shape[1]
    if None not in (n_t, n_s) and n_t != n_s:
        raise ValueError(
            f"{owner}: the teacher predicts against {n_t} anchors and the student against "
            f"{n_s}; both detectors must share one tfkd.Anchors (same image size, strides, "
            "aspect ratios and scales).")


def _targets(y_true, sample_weight, owner):
    """(y_class, y_box, positive (B, N) float, num_pos (B,) >= 1) from the encoder's labels."""
    if y_true is None:
        raise ValueError(
            f"{owner} needs the ground truth: feed (images, y, sample_weight) batches with the "
            f"targets of tfkd.Anchors.encoder, y = {{{CLASS_OUTPUT!r}: ..., {BOX_OUTPUT!r}: ...}}.")
    if not isinstance(y_true, dict) or CLASS_OUTPUT not in y_true or BOX_OUTPUT not in y_true:
        got = sorted(y_true) if isinstance(y_true, dict) else type(y_true).__name__
        raise ValueError(
            f"{owner}: the labels must be the dict of tfkd.Anchors.encoder, with "
            f"{CLASS_OUTPUT!r} (batch, anchors, classes) one-hot and {BOX_OUTPUT!r} (batch, "
            f"anchors, 4) encoded boxes; got {got}.")
    y_cls, y_box = as_float32(y_true[CLASS_OUTPUT]), as_float32(y_true[BOX_OUTPUT])
    if len(y_cls.shape) != 3 or len(y_box.shape) != 3:
        raise ValueError(
            f"{owner}: the labels must be (batch, anchors, classes) and (batch, anchors, 4); got "
            f"{tuple(y_cls.shape)} and {tuple(y_box.shape)}.")
    weights = sample_weight.get(BOX_OUTPUT) if isinstance(sample_weight, dict) else None
    if weights is not None:
        positive = ops.cast(as_float32(weights) > 0, "float32")
    else:
        positive = ops.cast(ops.max(y_cls, axis=-1) > 0.5, "float32")
    return y_cls, y_box, positive, ops.maximum(ops.sum(positive, axis=-1), 1.0)


def _as_anchors(value, owner):
    if isinstance(value, Anchors):
        return value
    if isinstance(value, dict):
        return Anchors.from_config(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            for v in value):
        return Anchors(image_size=tuple(int(v) for v in value))
    raise TypeError(
        f"{owner}: `anchors` must be the detector's tfkd.Anchors, its get_config() dict, or an "
        f"image size (height, width) for the default anchors at that size (those "
        f"ssd_mobile builds when given none); got {value!r}.")


class _DetectionTerm(Knowledge):
    """Reduction of per-image losses with the encoder's per-anchor weights (a dict)."""

    example_inputs = "detection"

    def loss(self, teacher, student, y_true=None, sample_weight=None, training=None):
        if isinstance(sample_weight, dict):
            # Per-anchor weights: read in `compute` (the positives); every image counts once.
            value = self.compute(teacher, student, y_true=y_true, sample_weight=sample_weight)
            return ops.mean(ops.cast(value, "float32"))
        return super().loss(teacher, student, y_true=y_true, sample_weight=sample_weight,
                            training=training)


def _layer_list(owner, arg, value):
    if isinstance(value, str):
        value = [value]
    try:
        value = list(value)
    except TypeError:
        raise TypeError(f"{owner}: `{arg}` must be a list of layer names, got {value!r}.") from None
    if not value:
        raise ValueError(f"{owner}: `{arg}` must name at least one layer, e.g. {list(LEVELS)}.")
    for name in value:
        _check_layer_name(owner, arg, name)
    return value


class _LevelTerm(_DetectionTerm):
    """Feature terms over level pairs, each with a 1x1 conv adapter on the student's map."""

    def __init__(self, student_layers=LEVELS, teacher_layers=LEVELS, weight=1.0, name=None,
                 **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)
        owner = type(self).__name__
        self.student_layers = _layer_list(owner, "student_layers", student_layers)
        self.teacher_layers = _layer_list(owner, "teacher_layers", teacher_layers)
        if len(self.student_layers) != len(self.teacher_layers):
            raise ValueError(
                f"{owner}: `student_layers` {self.student_layers} and `teacher_layers` "
                f"{self.teacher_layers} must pair up one to one (one level each).")
        self.adapters = []

    def build_term(self, teacher, student):
        owner = type(self).__name__
        self._build_levels(teacher, student)
        adapters = []
        for i, (s_name, t_name) in enumerate(zip(self.student_layers, self.teacher_layers)):
            t = _feature(teacher, t_name, "teacher", owner)
            s = _feature(student, s_name, "student", owner)
            if len(t.shape) != 4 or len(s.shape) != 4:
                raise ValueError(
                    f"{owner}({s_name!r} -> {t_name!r}): the levels must be 4-D (batch, height, "
                    f"width, channels) feature maps; got student {tuple(s.shape)} and teacher "
                    f"{tuple(t.shape)}. Tap the detector's neck maps (p4, p5, p6).")
            if t.shape[-1] is None or s.shape[-1] is None:
                raise ValueError(
                    f"{owner}({s_name!r} -> {t_name!r}): the channel (last) dimension must be "
                    f"known; got student {tuple(s.shape)} and teacher {tuple(t.shape)}.")
            if not self.adapters:
                conv = keras.layers.Conv2D(t.shape[-1], 1, dtype="float32",
                                           name=f"{self.name}_adapter_{i}")
                conv.build(tuple(s.shape))
                adapters.append(conv)
        if not self.adapters:
            self.adapters = adapters
        super().build_term(teacher, student)

    def _build_levels(self, teacher, student):
        """A subclass's own checks, before the adapters are made."""

    def _levels(self, teacher, student):
        """[(teacher map, student map resized to it, adapter(resized student map))] per level."""
        owner = type(self).__name__
        if not self.adapters:
            raise ValueError(f"{owner}: call `build_term` first (the Distiller does): the "
                             "adapters are created there.")
        out = []
        for s_name, t_name, adapter in zip(self.student_layers, self.teacher_layers,
                                           self.adapters):
            t = as_float32(_feature(teacher, t_name, "teacher", owner))
            s = _resize_like(as_float32(_feature(student, s_name, "student", owner)), t)
            out.append((t, s, adapter(s)))
        return out

    def get_config(self):
        config = super().get_config()
        config.update(student_layers=list(self.student_layers),
                      teacher_layers=list(self.teacher_layers))
        return config


# --------------------------------------------------------------------------------------------
# The terms.


class DetectionSoftTargets(_DetectionTerm):
    """Soft targets on a sigmoid detection head, with a larger weight on background anchors.

    Paper: G. Chen, W. Choi, X. Yu, T. Han, M. Chandraker, "Learning Efficient Object
    Detection Models with Knowledge Distillation", NeurIPS 2017 (the class-weighted soft
    target loss L_soft).

    Per anchor `a` and class `c`, with logits `z`, temperature `T` and `p = sigmoid(z / T)`:

        kl_ac = p_t log(p_t / p_s) + (1 - p_t) log((1 - p_t) / (1 - p_s))
        L_i   = T^2 * sum_a w_a sum_c kl_ac / max(num_pos_i, 1)

    with `w_a = background_weight` on the background anchors and 1 on the others. `kl` is the
    binary cross-entropy minus the teacher's entropy (the same gradients, and 0 when the
    student matches the teacher), from log-sigmoids; `T^2` keeps the gradient scale
    independent of `T`.

    From the paper's softmax to sigmoid heads: Faster R-CNN's classifier is a softmax over
    the object classes plus a background class, and the paper's soft loss is the weighted
    cross-entropy `-sum_c w_c P_t,c log P_s,c` with `w_0 = 1.5` for background and 1 for the
    objects (most proposals are background; the weight is the paper's answer to that
    imbalance). A sigmoid head has no background column and no one distribution per anchor:
    each class is its own Bernoulli. Weighting the "not c" half of every Bernoulli by `w_0`
    would move the loss's minimum away from the teacher (to `p_s = p_t / (p_t + w_0 (1 -
    p_t))`, a student pushed below the teacher's scores) and let it go negative. But on a
    background proposal the teacher's mass, and so the paper's loss, sits on the background
    term, and on an object proposal on the object classes: the weight lands on whole anchors.
    So here `w_0` weighs the background anchors, each anchor's loss keeps its minimum at the
    teacher, and the paper's `T = 1` (no softening works best for detection, they report) is
    the default.

    Background anchors, by `background`:
      - `"labels"` (default): the anchors the ground truth matches to no object (the
        encoder's negatives and its ignored anchors); normalised by the image's positive
        anchors, as the focal loss. Needs labels.
      - `"teacher"`: the anchors where the teacher's highest class probability
        `sigmoid(max_c z_t)` (at T = 1) is below 0.5; normalised by the number of the
        others (the teacher's foreground anchors, at least 1). No labels.

    Args:
        temperature: `T > 0` (paper: 1, i.e. none).
        background_weight: `w_0 >= 0` of the background anchors (paper: 1.5).
        background: "labels" or "teacher" (see above).
        weight: multiplier of this term (>= 0); the paper mixes hard and soft class losses
            as `mu L_hard + (1 - mu) L_soft`: the compiled focal loss is the hard part.
        name: metric prefix.

    Example:

    >>> import numpy as np, tfkd
    >>> from tfkd.knowledge import View
    >>> term = tfkd.knowledge.DetectionSoftTargets(background="teacher")
    >>> z = np.array([[[3.0, -2.0], [-4.0, -3.0]]], "float32")   # 1 image, 2 anchors, 2 classes
    >>> box = np.zeros((1, 2, 4), "float32")
    >>> float(term.loss(View({"class_logits": z, "box_regression": box}),
    ...                 View({"class_logits": z, "box_regression": box})))
    0.0
    >>> s = View({"class_logits": np.zeros((1, 2, 2), "float32"), "box_regression": box})
    >>> round(float(term.loss(View({"class_logits": z, "box_regression": box}), s)), 4)
    2.4881
    """

    default_name = "detection_soft_targets"
    aliases = ("detection_kd",)
    requires_labels = True  # with the default background="labels"
    example_args = {"temperature": 2.0, "background_weight": 1.5}
    _BACKGROUND = ("labels", "teacher")

    def __init__(self, temperature=1.0, background_weight=1.5, background="labels", weight=1.0,
                 name=None, **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)
        owner = "DetectionSoftTargets"
        self.temperature = check_positive("temperature", temperature, owner)
        self.background_weight = check_non_negative("background_weight", background_weight, owner)
        if background not in self._BACKGROUND:
            raise ValueError(
                f"{owner}: `background` must be 'labels' (anchors the ground truth gives no "
                "object; needs labels) or 'teacher' (anchors the teacher scores below 0.5; no "
                f"labels), got {background!r}.")
        self.background = background
        # The Distiller asks each term whether the batch must carry labels.
        self.requires_labels = background == "labels"

    def build_term(self, teacher, student):
        t_cls, _ = _check_heads(teacher, "teacher", "DetectionSoftTargets")
        s_cls, _ = _check_heads(student, "student", "DetectionSoftTargets")
        _same_anchors("DetectionSoftTargets", t_cls, s_cls)
        if None not in (t_cls.shape[-1], s_cls.shape[-1]) and t_cls.shape[-1] != s_cls.shape[-1]:
            raise ValueError(
                f"DetectionSoftTargets: the teacher predicts {t_cls.shape[-1]} classes and the "
                f"student {s_cls.shape[-1]}; both must predict the same classes (for a student "
                "with new classes use OldClassDistillation).")
        super().build_term(teacher, student)

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        z_t = as_float32(_heads(teacher, "teacher", "DetectionSoftTargets")[0])
        z_s = as_float32(_heads(student, "student", "DetectionSoftTargets")[0])
        temp = self.temperature
        a, b = z_t / temp, z_s / temp
        p_t = ops.sigmoid(a)
        kl = p_t * (ops.log_sigmoid(a) - ops.log_sigmoid(b)) \
            + (1.0 - p_t) * (ops.log_sigmoid(-a) - ops.log_sigmoid(-b))
        if self.background == "labels":
            _, _, foreground, count = _targets(y_true, sample_weight, "DetectionSoftTargets")
        else:
            foreground = ops.stop_gradient(ops.cast(ops.max(z_t, axis=-1) >= 0.0, "float32"))
            count = ops.maximum(ops.sum(foreground, axis=-1), 1.0)
        w = foreground + self.background_weight * (1.0 - foreground)
        return (temp * temp) * ops.sum(w * ops.sum(kl, axis=-1), axis=-1) / count

    def get_config(self):
        config = super().get_config()
        config.update(temperature=self.temperature, background_weight=self.background_weight,
                      background=self.background)
        return config


class BoundedRegression(_DetectionTerm):
    """Teacher-bounded regression: an L2 pull towards the boxes, while the teacher does better.

    Paper: G. Chen, W. Choi, X. Yu, T. Han, M. Chandraker, "Learning Efficient Object
    Detection Models with Knowledge Distillation", NeurIPS 2017 (the teacher bounded
    regression loss L_b).

    The teacher's regressions are unbounded and can point the wrong way, so they are no
    target: they bound. On the positive anchors `a` of image `i`, with the student's and
    teacher's box regressions `R_s`, `R_t`, the encoded ground truth `y` (the encoder's
    targets, in the heads' own coding) and margin `m`:

        d_s = ||R_s,a - y_a||^2       d_t = ||R_t,a - y_a||^2
        L_i = sum_a [d_s + m > d_t] d_s / max(num_pos_i, 1)

    The student is pulled towards the ground truth while it is not better than the teacher by
    more than `m`; once it is, the term falls silent on that anchor (the gate carries no
    gradient). The paper adds `nu * L_b` to the smooth-L1 regression loss: here the compiled
    Huber loss is the smooth-L1 part and `weight` is `nu`.

    Args:
        margin: `m`, a finite number (default 0: silent as soon as the student is at least as
            good as the teacher; > 0 keeps pulling a little past the teacher).
        weight: multiplier of this term (>= 0), the paper's `nu`.
        name: metric prefix.

    Example:

    >>> import numpy as np, tfkd
    >>> from tfkd.knowledge import View
    >>> y = {"class_logits": np.array([[[1.0], [0.0]]], "float32"),   # anchor 0 is positive
    ...      "box_regression": np.zeros((1, 2, 4), "float32")}
    >>> view = lambda box: View({"class_logits": np.zeros((1, 2, 1), "float32"),
    ...                          "box_regression": np.array(box, "float32")})
    >>> teacher = view([[[0.5, 0, 0, 0], [9, 9, 9, 9]]])
    >>> term = tfkd.knowledge.BoundedRegression()
    >>> float(term.loss(teacher, view([[[1.0, 0, 0, 0], [0, 0, 0, 0]]]), y))  # worse: pulled
    1.0
    >>> float(term.loss(teacher, view([[[0.2, 0, 0, 0], [0, 0, 0, 0]]]), y))  # better: silent
    0.0
    """

    default_name = "bounded_regression"
    aliases = ("teacher_bounded_regression",)
    requires_labels = True
    example_args = {"margin": 0.5}

    def __init__(self, margin=0.0, weight=1.0, name=None, **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)
        self.margin = check_number("margin", margin, "BoundedRegression")
        if not np.isfinite(self.margin):
            raise ValueError(f"BoundedRegression: `margin` must be finite, got {self.margin}.")

    def build_term(self, teacher, student):
        t_cls, _ = _check_heads(teacher, "teacher", "BoundedRegression")
        s_cls, _ = _check_heads(student, "student", "BoundedRegression")
        _same_anchors("BoundedRegression", t_cls, s_cls)
        super().build_term(teacher, student)

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        r_t = as_float32(_heads(teacher, "teacher", "BoundedRegression")[1])
        r_s = as_float32(_heads(student, "student", "BoundedRegression")[1])
        _, y_box, positive, count = _targets(y_true, sample_weight, "BoundedRegression")
        d_s = ops.sum(ops.square(r_s - y_box), axis=-1)
        d_t = ops.sum(ops.square(r_t - y_box), axis=-1)
        gate = ops.stop_gradient(ops.cast(d_s + self.margin > d_t, "float32"))
        return ops.sum(positive * gate * d_s, axis=-1) / count

    def get_config(self):
        config = super().get_config()
        config["margin"] = self.margin
        return config


class ForegroundImitation(_LevelTerm):
    """Fine-grained feature imitation: the student's neck maps imitate the teacher's on objects.

    Papers: T. Wang, L. Yuan, X. Zhang, J. Feng, "Distilling Object Detectors with
    Fine-grained Feature Imitation", CVPR 2019 (FGFI: imitation near the objects only,
    through an adaptation layer, normalised by the number of imitated cells); the mask from
    the ground-truth boxes and the optional separate background part as in Z. Yang, Z. Li,
    X. Jiang, Y. Gong, Z. Yuan, D. Zhao, C. Yuan, "Focal and Global Knowledge Distillation
    for Detectors", CVPR 2022 (FGD).

    For each level pair `l` (`student_layers[l]` -> `teacher_layers[l]`), with the teacher's
    map `t` (h x w cells, `C_t` channels), the student's map through a learned 1x1
    convolution `f_l` to `C_t` channels (bilinearly resized to h x w first if it differs),
    and the mask `M_jk = 1` when the centre `((j + 0.5) / h, (k + 0.5) / w)` of cell (j, k)
    lies inside a ground-truth box (normalised coordinates, the anchors' grid convention):

        e_jk = sum_c (f_l(s)_jkc - t_jkc)^2
        L_l  = sum M e / (2 max(sum M, 1))
               + background_weight * sum (1 - M) e / (2 max(sum (1 - M), 1))
        L_i  = mean_l L_l

    The ground-truth boxes are the decoded regression targets of the positive anchors
    (`anchors.decode(y["box_regression"])`; each object claims at least one anchor, so every
    box is there). FGFI's own mask is the union of the anchors whose IoU with a box exceeds
    0.5 times that box's best IoU; the box itself (as FGD) needs no threshold and no anchor
    scale. An image without objects has no foreground term. The adapters (one per level,
    always added, as FGFI's adaptation layer) are trained with the student and never
    exported with it.

    Scale: the loss sums channels (as FGFI); FGFI weighs it by 0.01 on 256/512-channel maps,
    so for the 64-128 channel neck maps of ssd_mobile a `weight` of ~0.05-0.1 is comparable.

    Args:
        anchors: the detector's `tfkd.Anchors`, its `get_config()` dict, or an image size
            `(height, width)` for the default anchors at that size (those `ssd_mobile` builds
            when given none). They decode the boxes. None (a term built by name) must be
            completed before training, e.g. `from_config({**config, "anchors": ...})` (the
            detection recipe passes its own).
        student_layers / teacher_layers: the level pairs (default p4, p5, p6 on both sides).
        background_weight: weight (>= 0) of the background cells' mean error (default 0:
            pure foreground imitation as FGFI; FGD keeps a smaller background part).
        weight: multiplier of this term (>= 0).
        name: metric prefix.

    Example:

    >>> import numpy as np, keras, tfkd
    >>> from tfkd.knowledge import View
    >>> anchors = tfkd.Anchors(image_size=(64, 64), strides=(16, 32))
    >>> y, _ = anchors.encoder(1)(np.array([[0.0, 0.0, 0.5, 0.5]], "float32"), np.array([0]))
    >>> y = {k: v.numpy()[None] for k, v in y.items()}
    >>> term = tfkd.knowledge.ForegroundImitation(anchors, ["p4"], ["p4"])
    >>> term.build_term(View(None, {"p4": keras.KerasTensor((None, 4, 4, 8))}),
    ...                 View(None, {"p4": keras.KerasTensor((None, 4, 4, 2))}))
    >>> t = View(None, {"p4": np.ones((1, 4, 4, 8), "float32")})
    >>> s = View(None, {"p4": np.zeros((1, 4, 4, 2), "float32")})   # adapter(0) = bias = 0
    >>> float(term.loss(t, s, y))   # 4 of the 16 cells are inside the box: 4 * 8 / (2 * 4)
    4.0
    """

    default_name = "foreground_imitation"
    aliases = ("fgfi", "fine_grained_imitation")
    requires_labels = True
    example_args = {"anchors": (64, 64), "background_weight": 0.5}

    def __init__(self, anchors=None, student_layers=LEVELS, teacher_layers=LEVELS,
                 background_weight=0.0, weight=1.0, name=None, **kwargs):
        super().__init__(student_layers=student_layers, teacher_layers=teacher_layers,
                         weight=weight, name=name, **kwargs)
        self.anchors = None if anchors is None else _as_anchors(anchors, "ForegroundImitation")
        self.background_weight = check_non_negative("background_weight", background_weight,
                                                    "ForegroundImitation")

    def _check_anchors(self):
        if self.anchors is None:
            raise ValueError(
                "ForegroundImitation needs the detector's anchors to decode the ground-truth "
                "boxes: pass anchors=<the detector's tfkd.Anchors> (or its config, or the image "
                "size (height, width) of default anchors).")

    def _build_levels(self, teacher, student):
        self._check_anchors()
        n, where = None, None
        for view, side in ((student, "student"), (teacher, "teacher")):
            outs = getattr(view, "outputs", None)
            if isinstance(outs, dict) and len(getattr(outs.get(CLASS_OUTPUT), "shape", ())) == 3:
                n, where = outs[CLASS_OUTPUT].shape[1], side
                break
        if n is not None and n != len(self.anchors):
            raise ValueError(
                f"ForegroundImitation: the {where} predicts against {n} anchors but `anchors` "
                f"has {len(self.anchors)} ({self.anchors!r}); pass the detector's own "
                "tfkd.Anchors.")

    def _mask(self, boxes, positive, t):
        """(B, h*w) 1.0 where the cell centre lies inside a positive anchor's box."""
        h, w = ops.shape(t)[1], ops.shape(t)[2]
        cy = (tf.range(h, dtype="float32") + 0.5) / tf.cast(h, "float32")
        cx = (tf.range(w, dtype="float32") + 0.5) / tf.cast(w, "float32")
        yy, xx = tf.meshgrid(cy, cx, indexing="ij")
        yy, xx = tf.reshape(yy, (1, -1, 1)), tf.reshape(xx, (1, -1, 1))
        b = boxes[:, None, :, :]  # (B, 1, N, 4)
        inside = ((yy >= b[..., 0]) & (yy <= b[..., 2]) & (xx >= b[..., 1]) & (xx <= b[..., 3])
                  & (positive[:, None, :] > 0))
        return tf.cast(tf.reduce_any(inside, axis=-1), "float32")

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        self._check_anchors()
        _, y_box, positive, _ = _targets(y_true, sample_weight, "ForegroundImitation")
        boxes = tf.stop_gradient(self.anchors.decode(y_box))
        total = 0.0
        levels = self._levels(teacher, student)
        for t, _, s in levels:
            mask = self._mask(boxes, positive, t)
            err = ops.reshape(ops.sum(ops.square(s - t), axis=-1), (ops.shape(t)[0], -1))
            fg = ops.sum(err * mask, axis=-1) / (2.0 * ops.maximum(ops.sum(mask, axis=-1), 1.0))
            level = fg
            if self.background_weight:
                bg_mask = 1.0 - mask
                bg = ops.sum(err * bg_mask, axis=-1) / (
                    2.0 * ops.maximum(ops.sum(bg_mask, axis=-1), 1.0))
                level = level + self.background_weight * bg
            total = total + level
        return total / float(len(levels))

    def get_config(self):
        config = super().get_config()
        config.update(anchors=None if self.anchors is None else self.anchors.get_config(),
                      background_weight=self.background_weight)
        return config


class AttentionGuided(_LevelTerm):
    """Attention-guided distillation: the teacher's spatial and channel attention pick the cells.

    Paper: L. Zhang, K. Ma, "Improve Object Detection with Feature-based Knowledge
    Distillation: Towards Accurate and Efficient Detectors", ICLR 2021 (the attention-guided
    part; its non-local relation part is not here). Code:
    github.com/ArchipLab-LinfengZhang/Object-Detection-Knowledge-Distillation-ICLR2021, and
    MMRazor's FBKD.

    For a map `F` (h x w cells, C channels) and temperature `T`:

        A_S(F) = h w softmax_jk( mean_c |F_jkc| / T )          spatial attention, mean 1
        A_C(F) = C softmax_c( mean_jk |F_jkc| / T )            channel attention, mean 1

    For each level pair, with the teacher's map `t`, the student's map `s` (bilinearly resized
    to the teacher's cells if needed) and its learned 1x1 convolution `f(s)` to `C_t` channels:

        L_AT = mean_jk |A_S(t) - A_S(s)| + mean_c |A_C(t) - A_C(f(s))|
        L_AM = sum_jkc (f(s)_jkc - t_jkc)^2 A_S(t)_jk A_C(t)_c / (h w C_t)
        L_i  = mean_levels (alpha L_AT + beta L_AM)

    The student's channel attention needs the adapted map (the widths differ); its spatial
    attention is its own. The masks in `L_AM` are the teacher's (the paper's; the released
    code averages teacher's and student's) and carry no gradient. No labels needed.

    Weights: the released code and MMRazor weigh the attention losses by 4e-3 and the masked
    feature loss by 7e-5 (x 6 for one-stage detectors), with T = 0.5 in MMRazor (0.5 or 0.1
    in the released code, by detector), but on sums: the feature loss is
    `sqrt(sum (f(s) - t)^2 A_S A_C)` over a batch of 256-channel FPN maps (millions of
    values) and the attention losses are L2 distances of pooled maps. Here both are means
    per value, so O(1) weights give O(1) losses: `alpha = beta = 1` (per value, the released
    weights are of one order too: 7e-5 * sqrt(~10^6 values) and 4e-3 * sqrt(~500 values)
    are both ~0.1).

    Args:
        student_layers / teacher_layers: the level pairs (default p4, p5, p6 on both sides).
        temperature: `T > 0` of both attentions (MMRazor's FBKD: 0.5).
        alpha: weight (>= 0) of the attention loss L_AT.
        beta: weight (>= 0) of the attention-masked feature loss L_AM.
        weight: multiplier of this term (>= 0).
        name: metric prefix.

    Example:

    >>> import numpy as np, keras, tfkd
    >>> from tfkd.knowledge import View
    >>> term = tfkd.knowledge.AttentionGuided(["p4"], ["p4"])
    >>> term.build_term(View(None, {"p4": keras.KerasTensor((None, 4, 4, 8))}),
    ...                 View(None, {"p4": keras.KerasTensor((None, 4, 4, 4))}))
    >>> rng = np.random.default_rng(0)
    >>> t = View(None, {"p4": rng.normal(size=(2, 4, 4, 8)).astype("float32")})
    >>> s = View(None, {"p4": rng.normal(size=(2, 4, 4, 4)).astype("float32")})
    >>> term.compute(t, s).shape
    TensorShape([2])
    """

    default_name = "attention_guided"
    aliases = ("fbkd", "attention_guided_kd")
    example_args = {"temperature": 0.5, "alpha": 1.0, "beta": 0.5}

    def __init__(self, student_layers=LEVELS, teacher_layers=LEVELS, temperature=0.5, alpha=1.0,
                 beta=1.0, weight=1.0, name=None, **kwargs):
        super().__init__(student_layers=student_layers, teacher_layers=teacher_layers,
                         weight=weight, name=name, **kwargs)
        self.temperature = check_positive("temperature", temperature, "AttentionGuided")
        self.alpha = check_non_negative("alpha", alpha, "AttentionGuided")
        self.beta = check_non_negative("beta", beta, "AttentionGuided")

    def _spatial(self, x):
        a = ops.reshape(ops.mean(ops.abs(x), axis=-1), (ops.shape(x)[0], -1))
        # tf.nn.softmax: a 1 x 1 level (p6 of a small image) is legitimate, no warning.
        return ops.cast(ops.shape(a)[1], "float32") * tf.nn.softmax(a / self.temperature, axis=-1)

    def _channel(self, x):
        a = ops.mean(ops.abs(x), axis=(1, 2))
        return ops.cast(ops.shape(a)[1], "float32") * tf.nn.softmax(a / self.temperature, axis=-1)

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        total = 0.0
        levels = self._levels(teacher, student)
        for t, s, f in levels:
            spatial_t = ops.stop_gradient(self._spatial(t))
            channel_t = ops.stop_gradient(self._channel(t))
            l_at = ops.mean(ops.abs(spatial_t - self._spatial(s)), axis=-1) \
                + ops.mean(ops.abs(channel_t - self._channel(f)), axis=-1)
            err = ops.reshape(ops.square(f - t), (ops.shape(t)[0], -1, ops.shape(t)[-1]))
            l_am = ops.mean(ops.mean(err * spatial_t[:, :, None], axis=1) * channel_t, axis=-1)
            total = total + self.alpha * l_at + self.beta * l_am
        return total / float(len(levels))

    def get_config(self):
        config = super().get_config()
        config.update(temperature=self.temperature, alpha=self.alpha, beta=self.beta)
        return config


class OldClassDistillation(_DetectionTerm):
    """Class-incremental detection: the new detector keeps the old one's answers on old classes.

    Paper: K. Shmelkov, C. Schmid, K. Alahari, "Incremental Learning of Object Detectors
    without Catastrophic Forgetting", ICCV 2017.

    The teacher is the old detector (K classes), the student the new one (K + K_new classes,
    its first K class columns the old classes, e.g. from `tfkd.students.detection.
    extend_classes`). The new data has labels for the new classes only, so the old classes
    are kept by distillation alone: per image `i`, over a selection `S_i` of anchors,

        L_cls,i = mean_{a in S_i} mean_{c < K} (z_s,ac - z_t,ac)^2
        L_box,i = mean_{a in B_i} mean_j (R_s,aj - R_t,aj)^2
        L_i     = L_cls,i + box_weight * L_box,i

    `S_i`: every anchor (default), or the `top_k` anchors with the teacher's highest old-class
    score (the paper distils on proposals drawn from the 128 with the lowest background
    score). `B_i`: the anchors where the teacher's highest old-class probability exceeds
    `score_threshold` (the class-agnostic box of a background anchor says nothing); an image
    with none has no box term.

    Shmelkov et al. subtract each RoI's mean logit over the classes before the L2, because a
    softmax ignores a common shift of its logits. A sigmoid head does not: each logit is its
    class's absolute score (the background level of an anchor is in every logit), so the
    logits are compared as they are.

    Args:
        top_k: None (every anchor) or the number (an integer >= 1) of anchors per image.
        box_weight: weight (>= 0) of the box regression part.
        score_threshold: the old-class probability in [0, 1] above which an anchor's box is
            distilled.
        weight: multiplier of this term (>= 0); the paper's lambda is 1.
        name: metric prefix.

    Example:

    >>> import numpy as np, tfkd
    >>> from tfkd.knowledge import View
    >>> box = np.zeros((1, 2, 4), "float32")
    >>> old = View({"class_logits": np.array([[[2.0], [-3.0]]], "float32"), "box_regression": box})
    >>> new = View({"class_logits": np.array([[[1.0, 5.0], [-3.0, 0.0]]], "float32"),
    ...             "box_regression": box + 1.0})
    >>> term = tfkd.knowledge.OldClassDistillation(box_weight=0.5)
    >>> float(term.loss(old, new))   # (1 + 0) / 2 anchors + 0.5 * 1 (anchor 0's box)
    1.0
    """

    default_name = "old_class_distillation"
    aliases = ("ilod", "incremental_detection")
    example_args = {"top_k": 20, "box_weight": 0.5, "score_threshold": 0.4}

    def __init__(self, top_k=None, box_weight=1.0, score_threshold=0.5, weight=1.0, name=None,
                 **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)
        owner = "OldClassDistillation"
        self.top_k = None if top_k is None else check_count("top_k", top_k, owner)
        self.box_weight = check_non_negative("box_weight", box_weight, owner)
        self.score_threshold = check_interval("score_threshold", score_threshold, owner, 0.0, 1.0)

    @classmethod
    def example_views(cls, batch=6, seed=0):
        """The detection examples with a 3-class old teacher (the student has 5 classes)."""
        teacher, student, y = super().example_views(batch=batch, seed=seed)
        teacher.outputs = dict(teacher.outputs, class_logits=teacher.outputs[CLASS_OUTPUT][..., :3])
        return teacher, student, y

    def build_term(self, teacher, student):
        owner = "OldClassDistillation"
        t_cls, _ = _check_heads(teacher, "teacher", owner)
        s_cls, _ = _check_heads(student, "student", owner)
        _same_anchors(owner, t_cls, s_cls)
        k, c = t_cls.shape[-1], s_cls.shape[-1]
        if None not in (k, c) and k > c:
            raise ValueError(
                f"{owner}: the old detector (teacher) has {k} classes but the new one (student) "
                f"only {c}; the student must predict the old classes first, then the new ones.")
        n = s_cls.shape[1]
        if self.top_k is not None and n is not None and self.top_k > n:
            raise ValueError(f"{owner}: top_k={self.top_k} but the detectors have {n} anchors.")
        super().build_term(teacher, student)

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        owner = "OldClassDistillation"
        z_t, r_t = (as_float32(x) for x in _heads(teacher, "teacher", owner))
        z_s, r_s = (as_float32(x) for x in _heads(student, "student", owner))
        k = z_t.shape[-1]
        per_anchor = ops.mean(ops.square(z_s[..., :k] - z_t), axis=-1)  # (B, N)
        best = ops.stop_gradient(ops.max(z_t, axis=-1))
        if self.top_k is None:
            cls = ops.mean(per_anchor, axis=-1)
        else:
            n = z_t.shape[1] if z_t.shape[1] is not None else self.top_k
            top = min(self.top_k, n)
            index = tf.math.top_k(best, k=top).indices  # (B, top)
            chosen = tf.reduce_sum(tf.one_hot(index, tf.shape(z_t)[1], dtype="float32"), axis=1)
            cls = ops.sum(per_anchor * chosen, axis=-1) / float(top)
        confident = ops.cast(ops.sigmoid(best) > self.score_threshold, "float32")
        box = ops.sum(ops.mean(ops.square(r_s - r_t), axis=-1) * confident, axis=-1) \
            / ops.maximum(ops.sum(confident, axis=-1), 1.0)
        return cls + self.box_weight * box

    def get_config(self):
        config = super().get_config()
        config.update(top_k=None if self.top_k is None else float(self.top_k),
                      box_weight=self.box_weight, score_threshold=self.score_threshold)
        return config
