"""Response-based knowledge: what the teacher's final outputs (logits) say.

All terms here work on logits (pre-softmax outputs) of shape `(batch, classes)` and return
a per-sample loss of shape `(batch,)`; `Knowledge.loss` applies sample weights the Keras way
(`sum(loss_i * w_i) / batch`). MLKD, whose batch- and class-level parts couple the samples,
returns a scalar and applies the sample weights itself. Math is float32 whatever the model's
dtype policy.
"""
import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tfkd.knowledge.base import Knowledge
from tfkd.knowledge.base import as_float32
from tfkd.knowledge.base import check_bool
from tfkd.knowledge.base import check_count
from tfkd.knowledge.base import check_interval
from tfkd.knowledge.base import check_non_negative
from tfkd.knowledge.base import check_number
from tfkd.knowledge.base import check_positive
from tfkd.knowledge.base import labels_to_classes_one_hot
from tfkd.knowledge.base import labels_to_one_hot
from tfkd.knowledge.base import serialize_schedule

_NEG = -1e9  # added to a logit to take it out of a softmax (exp underflows to exactly 0)
_STD_EPS = 1e-7  # logit standardisation: (z - mean) / (std + eps), as the authors' `normalize`
_LEARNABLE = "learnable"


def _standardize(z):
    """Per-sample z-score over the classes: (z - mean) / (std + 1e-7), `std` with Bessel's
    correction (PyTorch's `Tensor.std`, as in Sun et al.'s `normalize(logit)`).

    A row of equal logits has std 0: its z-scores are 0 and the square root is guarded, so
    that its gradient stays finite (PyTorch's `std` gives NaN there).
    """
    k = ops.cast(ops.shape(z)[-1], "float32")
    centred = z - ops.mean(z, axis=-1, keepdims=True)
    var = ops.sum(ops.square(centred), axis=-1, keepdims=True) / ops.maximum(k - 1.0, 1.0)
    positive = var > 0
    std = ops.where(positive, ops.sqrt(ops.where(positive, var, 1.0)), 0.0)
    return centred / (std + _STD_EPS)


@tf.custom_gradient
def _reverse_gradient(x, lam):
    """Identity forward; the backward pass multiplies the gradient by -lam (Ganin & Lempitsky's
    gradient reversal layer, as CTKD uses it)."""
    def grad(dy):
        return -lam * dy, tf.zeros_like(lam)
    return tf.identity(x), grad


class _CosineRamp(keras.optimizers.schedules.LearningRateSchedule):
    """CTKD's curriculum: 0 at step 0, rising along a half cosine to 1 at `steps`, then 1.

        lambda(step) = (1 - cos(pi * min(step, steps) / steps)) / 2

    (the authors' `CosineDecay(max_value=0, min_value=-1, num_loops)`, whose value is
    -lambda, read per optimizer step here instead of per epoch).
    """

    def __init__(self, steps):
        self.steps = check_count("steps", steps, "CTKD's curriculum")

    def __call__(self, step):
        t = ops.minimum(ops.cast(step, "float32"), float(self.steps)) / float(self.steps)
        return 0.5 * (1.0 - ops.cos(math.pi * t))

    def get_config(self):
        return {"steps": self.steps}


def _kl_from_logits(log_q_t, log_q_s):
    """Per-sample KL(q_t || q_s) = sum_k q_t,k (log q_t,k - log q_s,k), from log-probabilities."""
    return ops.sum(ops.exp(log_q_t) * (log_q_t - log_q_s), axis=-1)


def _check_logits(owner, teacher, student, selector, min_classes=1, need_teacher=True):
    """Validates the symbolic logits of both sides; returns the number of classes (or None)."""
    s = student.output(selector)
    if len(s.shape) != 2:
        raise ValueError(
            f"{owner} expects the student's logits of shape (batch, classes), got shape "
            f"{tuple(s.shape)}. Point the term at a classification output with `output=`, or "
            "flatten/pool the output in the model."
        )
    width = s.shape[-1]
    if need_teacher:
        if teacher is None:
            raise ValueError(
                f"{owner} needs a teacher: pass `teacher=` to the Distiller, or use "
                "tfkd.knowledge.TeacherFree for teacher-free distillation."
            )
        t = teacher.output(selector)
        if len(t.shape) != 2:
            raise ValueError(
                f"{owner} expects the teacher's logits of shape (batch, classes), got shape "
                f"{tuple(t.shape)}. Point the term at a classification output with `output=`."
            )
        if t.shape[-1] is not None and width is not None and t.shape[-1] != width:
            raise ValueError(
                f"{owner}: the teacher's logits have {t.shape[-1]} classes but the student's "
                f"have {width}. Both must predict the same classes: give the student a "
                f"{t.shape[-1]}-way head, or select matching outputs with `output=`."
            )
        width = width if width is not None else t.shape[-1]
    if width is not None and width < min_classes:
        raise ValueError(
            f"{owner} needs at least {min_classes} classes, the logits have {width}."
        )
    return width


class _ResponseTerm(Knowledge):
    """Shared plumbing: `output=` selection and float32 logits."""

    def __init__(self, weight=1.0, output=None, name=None, **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)
        if output is not None and not isinstance(output, (int, str)):
            raise TypeError(
                f"{type(self).__name__}: `output` must be an output index (int), an output "
                f"name (str) or None, got {output!r}."
            )
        # Not `self.output`: that is a read-only property of keras.layers.Layer.
        self.output_selector = output

    def _logits(self, view):
        return as_float32(view.output(self.output_selector))

    def get_config(self):
        config = super().get_config()
        config["output"] = self.output_selector
        return config


class _TemperedTerm(_ResponseTerm):
    """A `temperature` that is a number, a schedule, or CTKD's learnable one; `standardize`.

    - a number `T > 0`: fixed;
    - a `keras.optimizers.schedules.LearningRateSchedule` (or its serialized config): a
      fixed curriculum, read at the trainer's optimizer step with `at_step`, the mechanism
      a scheduled `weight` uses. It must stay > 0 (checked at step 0);
    - "learnable": CTKD's global temperature (Li et al., AAAI 2023). One scalar trainable
      variable `r`, created in `build_term`, and

          T = low + (high - low) * sigmoid(GRL_lambda(r))

      where `(low, high) = temperature_range` and GRL is a gradient reversal: the identity
      forward, the gradient times `-lambda` backward, so the optimizer moves `T` to
      *increase* the distillation loss (the adversarial "hard" curriculum) while the
      student decreases it. `lambda` follows CTKD's cosine curriculum from 0 at step 0 to
      1 at `curriculum_steps` (then 1). `r` starts where `T = initial_temperature`.
    """

    def _init_temperature(self, temperature, standardize, initial_temperature,
                          temperature_range, curriculum_steps):
        owner = type(self).__name__
        self.standardize = check_bool("standardize", standardize, owner)
        self.initial_temperature = check_positive("initial_temperature", initial_temperature,
                                                  owner)
        self.temperature_range = self._check_range(temperature_range, owner)
        self.curriculum_steps = check_count("curriculum_steps", curriculum_steps, owner)
        self.temperature = self._check_temperature(temperature, owner)
        low, high = self.temperature_range
        if self.temperature == _LEARNABLE and not low < self.initial_temperature < high:
            raise ValueError(
                f"{owner}: `initial_temperature` must lie strictly inside temperature_range="
                f"({low:g}, {high:g}) (the learnable temperature is low + (high - low) * "
                f"sigmoid(r)), got {self.initial_temperature}.")
        self._curriculum = _CosineRamp(self.curriculum_steps)
        self.temperature_logit = None

    @staticmethod
    def _check_range(value, owner):
        if (not isinstance(value, (list, tuple)) or len(value) != 2
                or any(isinstance(v, (bool, np.bool_, str)) for v in value)):
            raise TypeError(
                f"{owner}: `temperature_range` must be a pair (low, high) of numbers, got "
                f"{value!r}.")
        low = check_number("temperature_range", value[0], owner)
        high = check_number("temperature_range", value[1], owner)
        if not (math.isfinite(low) and math.isfinite(high) and 0 < low < high):
            raise ValueError(
                f"{owner}: `temperature_range` must be (low, high) with 0 < low < high, both "
                f"finite, got ({low}, {high}). CTKD uses (1, 21).")
        return (low, high)

    @staticmethod
    def _check_temperature(value, owner):
        if isinstance(value, str):
            if value.strip().lower() == _LEARNABLE:
                return _LEARNABLE
            raise TypeError(
                f"{owner}: `temperature` must be a number, got {value!r}. It is a number > 0, "
                "a keras.optimizers.schedules.LearningRateSchedule, or 'learnable' (CTKD).")
        if isinstance(value, dict) and "class_name" in value:
            value = keras.saving.deserialize_keras_object(value)
        if isinstance(value, keras.optimizers.schedules.LearningRateSchedule):
            first = float(value(0))
            if not math.isfinite(first) or first <= 0:
                raise ValueError(
                    f"{owner}: the `temperature` schedule must stay > 0; at step 0 it is "
                    f"{first}. (warmup(...) starts at 0: it is a weight schedule.)")
            return value
        if callable(value):
            raise TypeError(
                f"{owner}: `temperature` got {type(value).__name__}, a callable Keras cannot "
                "serialize; pass a number, a keras.optimizers.schedules.LearningRateSchedule "
                "or 'learnable'.")
        return check_positive("temperature", value, owner)

    def _build_temperature(self):
        if self.temperature != _LEARNABLE or self.temperature_logit is not None:
            return
        low, high = self.temperature_range
        u = (self.initial_temperature - low) / (high - low)
        self.temperature_logit = self.add_weight(
            shape=(), name="temperature_logit", trainable=True,
            initializer=keras.initializers.Constant(math.log(u / (1.0 - u))))

    def build_term(self, teacher, student):
        self._build_temperature()
        super().build_term(teacher, student)

    def current_temperature(self):
        """This step's temperature: the number, the schedule's value at the trainer's step,
        or the learnable temperature (through the gradient reversal: differentiate it, do
        not read it for a log; `float()` of it is its value)."""
        t = self.temperature
        if t != _LEARNABLE:
            return self.at_step(t)
        if self.temperature_logit is None:
            if not tf.executing_eagerly():
                raise ValueError(
                    f"{type(self).__name__}: call `build_term` before tracing the loss (the "
                    "Distiller does): the learnable temperature is a variable created there.")
            self._build_temperature()
        low, high = self.temperature_range
        lam = ops.cast(self.at_step(self._curriculum), "float32")
        r = _reverse_gradient(tf.identity(self.temperature_logit.value), lam)
        return low + (high - low) * ops.sigmoid(r)

    def _prepared_logits(self, view):
        z = self._logits(view)
        return _standardize(z) if self.standardize else z

    def get_config(self):
        config = super().get_config()
        config.update(
            temperature=serialize_schedule(self.temperature),
            standardize=self.standardize,
            initial_temperature=self.initial_temperature,
            temperature_range=list(self.temperature_range),
            curriculum_steps=float(self.curriculum_steps),
        )
        return config


class SoftTargets(_TemperedTerm):
    """Hinton's soft targets: the student matches the teacher's softened class distribution.

    Paper: G. Hinton, O. Vinyals, J. Dean, "Distilling the Knowledge in a Neural Network",
    NIPS 2014 Deep Learning Workshop (arXiv:1503.02531).

    Per sample, with teacher logits `z_t`, student logits `z_s` and temperature `T`:

        L_i = T^2 * KL(softmax(z_t / T) || softmax(z_s / T))
            = T^2 * sum_k q_t,k * (log q_t,k - log q_s,k)

    The `T^2` keeps the gradient scale independent of `T`. The student's task loss on the
    hard labels is the Distiller's own (`compile(loss=...)`, `student_loss_weight`).

    Logit standardisation (`standardize=True`; S. Sun, W. Ren, J. Li, R. Wang, X. Cao,
    "Logit Standardization in Knowledge Distillation", CVPR 2024) replaces each side's
    logits by their per-sample z-score over the classes before the division by `T`:

        Z(z) = (z - mean_k z_k) / (std_k z_k + 1e-7)          (std with Bessel's correction)
        L_i  = T^2 * KL(softmax(Z(z_t) / T) || softmax(Z(z_s) / T))

    so that the student matches the teacher's logit relations, not their range. The authors
    pair it with a small base temperature and a large weight: on CIFAR-100 `T = 2` (3 for
    some pairs), KD weight 9 and CE weight 0.1, i.e. `SoftTargets(temperature=2.0,
    standardize=True, weight=9.0)` with `student_loss_weight=0.1`. The defaults (`T = 4`,
    `standardize=False`) are classic KD.

    Curriculum temperature (Z. Li, X. Li, L. Yang, B. Zhao, R. Song, L. Luo, J. Li, J. Yang,
    "Curriculum Temperature for Knowledge Distillation", AAAI 2023): `temperature` may be a
    `keras.optimizers.schedules.LearningRateSchedule` (a fixed curriculum, read at the
    trainer's optimizer step, the way a scheduled `weight` is), or "learnable", CTKD's
    global temperature: one trainable scalar `r` (created in `build_term`; the trainer's
    optimizer updates it with the student) and

        T = low + (high - low) * sigmoid(GRL(r)),     (low, high) = temperature_range

    where the gradient reversal GRL is the identity forward and multiplies the gradient by
    `-lambda` backward: `T` moves to *raise* the loss the student lowers. `lambda` follows
    CTKD's cosine curriculum, `(1 - cos(pi * min(step, S) / S)) / 2` for the optimizer step
    and `S = curriculum_steps`: 0 at the start, 1 from step `S` on. The authors' CIFAR
    setting is (low, high) = (1, 21) (`t_start=1, t_end=20`), lambda over the first 10
    epochs (`curriculum_steps` = 10 * steps per epoch), KD weight 0.9, CE weight 0.1. Their
    `r` starts at 1 (T = 1 + 20 sigmoid(1) ~ 15.6); here `r` starts where
    `T = initial_temperature` (4). `current_temperature()` gives this step's `T` in every
    case. Keep weight decay off the term's variable if your optimizer decays all weights
    (it pulls `r` to 0, i.e. T to the middle of the range).

    Args:
        temperature: softening temperature `T > 0`, a schedule of it, or "learnable".
        weight: multiplier of this term in the total loss (>= 0), or a schedule of it.
        output: for multi-output models, which output holds the logits (index or name,
            the same on both sides). None for single-output models.
        name: metric prefix (`<name>_loss`).
        standardize: z-score both sides' logits per sample first (Sun et al.); False.
        initial_temperature: the learnable temperature's start, inside `temperature_range`.
        temperature_range: (low, high), 0 < low < high, the learnable temperature's bounds.
        curriculum_steps: optimizer steps over which CTKD's lambda rises from 0 to 1 (>= 1).
            The last three only matter with temperature="learnable".

    Example:

    >>> import numpy as np, tfkd
    >>> from tfkd.knowledge import View
    >>> term = tfkd.knowledge.SoftTargets(temperature=4.0)
    >>> t = View(np.array([[2.0, 0.5, -1.0]], "float32"))
    >>> s = View(np.array([[1.0, 1.0, 0.0]], "float32"))
    >>> round(float(term.loss(t, s)), 4)
    0.3739
    >>> lskd = tfkd.knowledge.get("soft_targets:temperature=2,standardize=True,weight=9")
    >>> round(float(lskd.loss(t, s)), 4)
    0.1008
    >>> ctkd = tfkd.knowledge.get("soft_targets:temperature=learnable,curriculum_steps=500")
    >>> round(float(ctkd.current_temperature()), 4)
    4.0
    """

    default_name = "soft_targets"
    aliases = ("kd", "hinton")
    example_args = {"temperature": 3.0}

    def __init__(self, temperature=4.0, weight=1.0, output=None, name=None, standardize=False,
                 initial_temperature=4.0, temperature_range=(1.0, 21.0), curriculum_steps=10000,
                 **kwargs):
        super().__init__(weight=weight, output=output, name=name, **kwargs)
        self._init_temperature(temperature, standardize, initial_temperature,
                               temperature_range, curriculum_steps)

    def build_term(self, teacher, student):
        width = _check_logits("SoftTargets", teacher, student, self.output_selector)
        if self.standardize and width is not None and width < 2:
            raise ValueError(
                f"SoftTargets: standardize=True needs at least 2 classes (a z-score over "
                f"{width} class is undefined).")
        super().build_term(teacher, student)

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        t = self.current_temperature()
        log_q_t = ops.log_softmax(self._prepared_logits(teacher) / t, axis=-1)
        log_q_s = ops.log_softmax(self._prepared_logits(student) / t, axis=-1)
        return (t * t) * _kl_from_logits(log_q_t, log_q_s)


class DecoupledKD(_TemperedTerm):
    """Decoupled knowledge distillation: target-class and non-target-class parts of KD.

    Paper: B. Zhao, Q. Cui, R. Song, Y. Qiu, J. Liang, "Decoupled Knowledge Distillation",
    CVPR 2022.

    With `p = softmax(z / T)` on each side and `c` the true class of the sample:

        b   = [p_c, 1 - p_c]                                (binary target / non-target)
        p^  = softmax over k != c of z_k / T                (non-target distribution)
        TCKD_i = KL(b^t || b^s)
        NCKD_i = KL(p^t || p^s)
        L_i    = T^2 * (alpha * TCKD_i + beta * NCKD_i)

    Soft labels (mixup, label smoothing) are reduced to their arg-max class. The paper's
    warm-up of the KD weight is a schedule, not part of the loss: pass
    `weight=tfkd.knowledge.warmup(1.0, steps)` (spec `dkd:weight=warmup(1.0,2000)`).

    `standardize=True` z-scores both sides' logits per sample before the division by `T`
    (Sun et al., CVPR 2024; see `SoftTargets`), as the authors' `dkd_loss(...,
    logit_stand)` does: `z` above is then `Z(z)`. Their DKD+Ours command line
    (`--logit-stand --base-temp 2 --kd-weight 9`) sets alpha = 9 and beta = 81 (their code
    multiplies the already scaled alpha) and leaves DKD's own T at 4 (`--base-temp` writes
    the KD temperature, which DKD does not read): `DecoupledKD(alpha=9, beta=81,
    temperature=4, standardize=True)` reproduces it. `temperature` may also be a schedule
    or "learnable" (CTKD, which the CTKD authors combine with DKD too), exactly as in
    `SoftTargets`.

    Args:
        alpha: weight of TCKD (>= 0). Paper default 1.0.
        beta: weight of NCKD (>= 0). Paper default 8.0 (CIFAR-100).
        temperature: `T > 0`, a schedule of it, or "learnable". Paper default 4.0.
        weight: multiplier of this term (>= 0), or a schedule of it.
        output: which output holds the logits for multi-output models.
        name: metric prefix.
        standardize: z-score the logits per sample first (Sun et al.); False.
        initial_temperature, temperature_range, curriculum_steps: the learnable
            temperature's start, bounds and curriculum length, as in `SoftTargets`.

    Needs labels (`requires_labels = True`) and at least 3 classes.

    Example:

    >>> import numpy as np, tfkd
    >>> from tfkd.knowledge import View
    >>> term = tfkd.knowledge.DecoupledKD(alpha=1.0, beta=8.0, temperature=4.0)
    >>> t = View(np.array([[2.0, 0.5, -1.0]], "float32"))
    >>> s = View(np.array([[1.0, 1.0, 0.0]], "float32"))
    >>> round(float(term.loss(t, s, y_true=np.array([0]))), 4)
    0.6007
    """

    requires_labels = True
    default_name = "dkd"
    example_args = {"alpha": 0.5, "beta": 4.0, "temperature": 2.0}

    def __init__(self, alpha=1.0, beta=8.0, temperature=4.0, weight=1.0, output=None,
                 name=None, standardize=False, initial_temperature=4.0,
                 temperature_range=(1.0, 21.0), curriculum_steps=10000, **kwargs):
        super().__init__(weight=weight, output=output, name=name, **kwargs)
        self.alpha = check_non_negative("alpha", alpha, "DecoupledKD")
        self.beta = check_non_negative("beta", beta, "DecoupledKD")
        self._init_temperature(temperature, standardize, initial_temperature,
                               temperature_range, curriculum_steps)

    def build_term(self, teacher, student):
        width = _check_logits("DecoupledKD", teacher, student, self.output_selector)
        self._check_classes(width)
        super().build_term(teacher, student)

    @staticmethod
    def _check_classes(width):
        if width is not None and width < 3:
            raise ValueError(
                f"DecoupledKD needs at least 3 classes, the logits have {width}: with fewer "
                "there is no non-target distribution to distil (NCKD is empty). Use "
                "tfkd.knowledge.SoftTargets for binary problems."
            )

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        t = self.current_temperature()
        z_t = self._prepared_logits(teacher) / t
        z_s = self._prepared_logits(student) / t
        self._check_classes(z_s.shape[-1])
        num_classes = z_s.shape[-1]
        gt = labels_to_classes_one_hot(y_true, num_classes, "DecoupledKD")
        return (t * t) * (
            self.alpha * self._tckd(z_t, z_s, gt) + self.beta * self._nckd(z_t, z_s, gt)
        )

    @staticmethod
    def _binary_log_probs(z, gt):
        """log p_c and log(1 - p_c), computed stably from logits."""
        lse_all = ops.logsumexp(z, axis=-1)
        log_p_target = ops.sum(z * gt, axis=-1) - lse_all
        log_p_other = ops.logsumexp(z + _NEG * gt, axis=-1) - lse_all
        return log_p_target, log_p_other

    def _tckd(self, z_t, z_s, gt):
        lt_c, lt_o = self._binary_log_probs(z_t, gt)
        ls_c, ls_o = self._binary_log_probs(z_s, gt)
        return ops.exp(lt_c) * (lt_c - ls_c) + ops.exp(lt_o) * (lt_o - ls_o)

    @staticmethod
    def _nckd(z_t, z_s, gt):
        log_pt = ops.log_softmax(z_t + _NEG * gt, axis=-1)
        log_ps = ops.log_softmax(z_s + _NEG * gt, axis=-1)
        return ops.sum((1.0 - gt) * ops.exp(log_pt) * (log_pt - log_ps), axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(alpha=self.alpha, beta=self.beta)
        return config


class TeacherFree(_ResponseTerm):
    """Teacher-free KD with a manually designed "virtual teacher" (Tf-KD_reg).

    Paper: L. Yuan, F. E. H. Tay, G. Li, T. Wang, J. Feng, "Revisiting Knowledge Distillation
    via Label Smoothing Regularization", CVPR 2020 (arXiv:1909.11723), Section 5.

    The virtual teacher puts `a = correct_prob` on the true class `c` and spreads the rest
    uniformly over the other `K - 1` classes; it is softened with temperature `tau` and the
    student matches it with a KL divergence. Exactly as in the authors' released code
    (`loss_kd_regularization`), the temperature is applied to the virtual teacher's
    *probabilities* (treated as logits) and not to the student:

        p^d_k = a                 if k == c
              = (1 - a) / (K - 1) otherwise
        r     = softmax(p^d / tau)
        L_i   = KL(r || softmax(z_s)) = sum_k r_k * (log r_k - log softmax(z_s)_k)

    The paper's total loss is `(1 - alpha) * CE(y, softmax(z_s)) + alpha * L`: the CE part is
    the Distiller's task loss. The authors' CIFAR-100 setting (alpha=0.1, a=0.99, tau=20,
    their `multiplier=100` undoing PyTorch's mean over the 100 classes) is
    `TeacherFree(correct_prob=0.99, temperature=20.0, weight=0.1)` with
    `student_loss_weight=0.9`. No teacher is needed (`requires_teacher = False`); the labels
    are (`requires_labels = True`). Soft labels are reduced to their arg-max class.

    Args:
        correct_prob: probability `a` of the true class in the virtual teacher, in (0, 1].
        temperature: `tau > 0` that softens the virtual teacher (paper/code: 20).
        weight: multiplier of this term (>= 0).
        output: which output holds the logits for multi-output students.
        name: metric prefix.

    Example:

    >>> import numpy as np, tfkd
    >>> from tfkd.knowledge import View
    >>> term = tfkd.knowledge.TeacherFree(correct_prob=0.9, temperature=20.0)
    >>> s = View(np.array([[1.0, 1.0, 0.0]], "float32"))
    >>> round(float(term.loss(None, s, y_true=np.array([0]))), 4)
    0.0922
    """

    requires_teacher = False
    requires_labels = True
    default_name = "teacher_free"
    aliases = ("tf_kd",)
    example_args = {"correct_prob": 0.95, "temperature": 10.0}

    def __init__(self, correct_prob=0.9, temperature=20.0, weight=1.0, output=None, name=None,
                 **kwargs):
        super().__init__(weight=weight, output=output, name=name, **kwargs)
        self.correct_prob = check_interval(
            "correct_prob", correct_prob, "TeacherFree", 0.0, 1.0, low_open=True,
            why=" It is the virtual teacher's probability of the true class; the paper uses "
                "0.9-0.99.")
        self.temperature = check_positive("temperature", temperature, "TeacherFree")

    def build_term(self, teacher, student):
        width = _check_logits("TeacherFree", None, student, self.output_selector, need_teacher=False)
        if width is not None and width < 2:
            raise ValueError(
                f"TeacherFree needs at least 2 classes, the student's logits have {width}."
            )
        super().build_term(teacher, student)

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        z_s = self._logits(student)
        num_classes = z_s.shape[-1]
        gt = labels_to_classes_one_hot(y_true, num_classes, "TeacherFree")
        a = self.correct_prob
        virtual = gt * a + (1.0 - gt) * ((1.0 - a) / (num_classes - 1))
        log_r = ops.log_softmax(virtual / self.temperature, axis=-1)
        log_p = ops.log_softmax(z_s, axis=-1)
        return _kl_from_logits(log_r, log_p)

    def get_config(self):
        config = super().get_config()
        config.update(correct_prob=self.correct_prob, temperature=self.temperature)
        return config


class LabelSmoothedKD(_ResponseTerm):
    """Label-smoothed ground truth mixed with Hinton's soft targets.

    Label smoothing: C. Szegedy et al., "Rethinking the Inception Architecture", CVPR 2016;
    KD: Hinton et al. 2015; the combination is equation (4) of the review (Gou et al.,
    "Knowledge Distillation: A Survey", IJCV 2021) and the LSR view of KD of Yuan et al.,
    CVPR 2020.

    With `K` classes, labels `y` (one-hot), smoothing `eps`, mixing `alpha` and temperature `T`:

        LS_eps(y) = (1 - eps) * y + eps / K                      (Keras' label_smoothing)
        L_i = (1 - alpha) * CE(LS_eps(y), softmax(z_s))
              + alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))

    `CE(q, p) = -sum_k q_k log p_k`. Because the term contains its own ground-truth part,
    use it with `student_loss_weight=0` (or mind the double counting).

    Args:
        smoothing: `eps` in [0, 1].
        alpha: mixing weight in [0, 1] of the distillation part.
        temperature: `T > 0`.
        weight: multiplier of this term (>= 0).
        output: which output holds the logits for multi-output models.
        name: metric prefix.

    Example:

    >>> import numpy as np, tfkd
    >>> from tfkd.knowledge import View
    >>> term = tfkd.knowledge.LabelSmoothedKD(smoothing=0.1, alpha=0.5, temperature=4.0)
    >>> t = View(np.array([[2.0, 0.5, -1.0]], "float32"))
    >>> s = View(np.array([[1.0, 1.0, 0.0]], "float32"))
    >>> round(float(term.loss(t, s, y_true=np.array([0]))), 4)
    0.6346
    """

    requires_labels = True
    default_name = "label_smoothed_kd"
    example_args = {"smoothing": 0.2, "alpha": 0.4, "temperature": 5.0}

    def __init__(self, smoothing=0.1, alpha=0.5, temperature=4.0, weight=1.0, output=None,
                 name=None, **kwargs):
        super().__init__(weight=weight, output=output, name=name, **kwargs)
        self.smoothing = check_interval("smoothing", smoothing, "LabelSmoothedKD", 0.0, 1.0)
        self.alpha = check_interval("alpha", alpha, "LabelSmoothedKD", 0.0, 1.0)
        self.temperature = check_positive("temperature", temperature, "LabelSmoothedKD")

    def build_term(self, teacher, student):
        _check_logits("LabelSmoothedKD", teacher, student, self.output_selector)
        super().build_term(teacher, student)

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        z_s = self._logits(student)
        num_classes = z_s.shape[-1]
        y = labels_to_one_hot(y_true, num_classes, "LabelSmoothedKD")
        smoothed = (1.0 - self.smoothing) * y + self.smoothing / num_classes
        ce = -ops.sum(smoothed * ops.log_softmax(z_s, axis=-1), axis=-1)
        t = self.temperature
        log_q_t = ops.log_softmax(self._logits(teacher) / t, axis=-1)
        log_q_s = ops.log_softmax(z_s / t, axis=-1)
        kd = (t * t) * _kl_from_logits(log_q_t, log_q_s)
        return (1.0 - self.alpha) * ce + self.alpha * kd

    def get_config(self):
        config = super().get_config()
        config.update(smoothing=self.smoothing, alpha=self.alpha, temperature=self.temperature)
        return config



def _masked_median(x, valid):
    """The median of `x` (1-D) over the entries where `valid`, as np.percentile(x, 50):
    the middle value, or the mean of the two middle values of an even count."""
    n = ops.sum(ops.cast(valid, "int32"))
    ordered = tf.sort(ops.where(valid, x, float("inf")))
    last = ops.shape(x)[0] - 1
    lo = ops.clip(ops.floor_divide(n - 1, 2), 0, last)
    hi = ops.clip(ops.floor_divide(n, 2), 0, last)
    return 0.5 * (ops.take(ordered, lo) + ops.take(ordered, hi))


class MLKD(_ResponseTerm):
    """Multi-level logit distillation: instance-, batch- and class-level prediction alignment.

    Paper: Y. Jin, J. Wang, D. Lin, "Multi-Level Logit Distillation", CVPR 2023; the loss
    follows the authors' `MLKD.py` (mdistiller) on the weak-augmentation view.

    With `p^T = softmax(z / T)` on each side (a `(B, C)` matrix), sample weights `w_i` (1
    when none; the sums below run over the samples of weight > 0, `W = sum_i w_i`), and for
    each temperature `T` of `temperatures`:

        KD_T = T^2 * sum_i w_i KL(p_t,i^T || p_s,i^T) / W       (instance level)
        G^T  = p^T (p^T)' (B, B: input correlation)
        BC_T = sum_ij w_i w_j (G_t,ij^T - G_s,ij^T)^2 / W       (batch level)
        M^T  = (p^T)' diag(w) p^T (C, C: class correlation)
        CC_T = sum_kl (M_t,kl^T - M_s,kl^T)^2 / C               (class level)

    Confidence masks (prediction augmentation), from the teacher at T = 1, `q = softmax(z_t)`:
    sample i is kept when its confidence `max_k q_ik` is at most the batch median of the
    confidences (`np.percentile(..., 50)`), class k when its summed probability
    `sum_i w_i q_ik` is at most the median over the classes. In the authors' code each level
    is reduced over the batch *before* the mask multiplies it (`(kd_loss(...) *
    mask).mean()`, with `reduce=False` commented out), so the masks scale the levels by the
    kept fractions `f_s = sum_i w_i m_i / W` (about 1/2) and `f_c = mean_k c_k` rather than
    selecting samples; that is what is implemented:

        L = sum_T [ f_s * (KD_T + BC_T) + f_c * CC_T ]

    (`confidence_mask=False`: f_s = f_c = 1). `standardize=True` z-scores the logits of
    the instance level only (Sun et al., CVPR 2024; see `SoftTargets`), as the authors'
    MLKD+Ours does; BC, CC and the masks use the raw logits.

    The loss couples the samples (G, M, the medians), so it is a scalar: a sample of weight 0
    leaves no trace.

    Level scale (`normalize_levels`). In the authors' sums BC grows as B / C and CC as
    (B / C)^2: about B^2 / C same-class pairs have G_ij near 1, and each of M's C diagonal
    entries is near B / C. At their CIFAR-100 batch 64 the factors are 0.64 and 0.41, so both
    levels are small beside the instance level; at CIFAR-10 batch 128 they are 12.8 and 164.
    Measured there (the reference ResNet-20 teacher, a fresh `mobile_cnn`, the first step,
    `benchmarks/results/term_scale.md`): the authors' sums give a loss of 159, against 43
    normalised and a cross-entropy of 2.4, and a student trained with them stays at chance
    (10.0% after 10 epochs on one seed, where the student alone scores 62.1%; normalised,
    64.7 +- 1.5% over 3 seeds against 63.3% alone; `benchmarks/results/kd_cifar10.md`, rows
    `mlkd_reference` and `mlkd`). So by default (`normalize_levels=True`, a departure from
    the reference) both levels are divided by those factors:

        BC_T = C * sum_ij w_i w_j (G_t,ij - G_s,ij)^2 / W^2
        CC_T = C * sum_kl (M_t,kl - M_s,kl)^2 / W^2

    which leaves the loss unchanged when every sample of a batch is repeated, and is within
    a factor 2.5 of the reference at the authors' setting. `normalize_levels=False` computes
    the authors' sums.

    Not included: the second, strongly augmented view. The authors run teacher and student
    on a weak and a strong augmentation of each batch and add the strong view's KD at every
    T without the mask (and, in their code, the T = 2 and 6 parts of it are computed on the
    weak view); their BC/CC terms on the strong view are computed but not used. With one
    batch per step this term is the weak-view loss; feed strongly augmented batches in the
    data pipeline if you want that part. Their weights: every level at KD weight 0.9 (CE
    0.1 on each view), or KD weight 9 with logit standardisation and base temperature 2
    (temperatures (2, 3, 5, 2, 6): their base 4 replaced by 2).

    Args:
        temperatures: non-empty list of temperatures > 0, each level summed over them
            (the paper's (2, 3, 4, 5, 6); order does not matter).
        standardize: z-score the instance level's logits per sample (Sun et al.); False.
        confidence_mask: scale the levels by the kept fractions of the confidence masks, as
            the reference; True.
        normalize_levels: divide the batch and class levels by B / C and (B / C)^2 (above);
            True. False: the authors' sums.
        weight: multiplier of this term (>= 0), or a schedule of it.
        output: which output holds the logits for multi-output models.
        name: metric prefix.

    Example:

    >>> import numpy as np, tfkd
    >>> from tfkd.knowledge import View
    >>> rng = np.random.default_rng(0)
    >>> t = View(rng.normal(size=(8, 5)).astype("float32") * 3)
    >>> s = View(rng.normal(size=(8, 5)).astype("float32"))
    >>> term = tfkd.knowledge.get("mlkd")
    >>> term.temperatures, term.compute(t, s).shape
    ([2.0, 3.0, 4.0, 5.0, 6.0], TensorShape([]))
    >>> float(term.loss(t, t))
    0.0
    """

    default_name = "mlkd"
    aliases = ("multi_level_kd",)
    example_args = {"temperatures": [1.0, 3.0], "standardize": True}

    def __init__(self, temperatures=(2.0, 3.0, 4.0, 5.0, 6.0), standardize=False,
                 confidence_mask=True, normalize_levels=True, weight=1.0, output=None,
                 name=None, **kwargs):
        super().__init__(weight=weight, output=output, name=name, **kwargs)
        if isinstance(temperatures, (int, float)) and not isinstance(temperatures, bool):
            temperatures = [temperatures]
        if not isinstance(temperatures, (list, tuple)) or not temperatures:
            raise ValueError(
                f"MLKD: `temperatures` must be a non-empty list of numbers > 0, got "
                f"{temperatures!r}; the paper uses [2, 3, 4, 5, 6].")
        self._temperatures = tuple(check_positive("temperatures", t, "MLKD")
                                   for t in temperatures)
        self.standardize = check_bool("standardize", standardize, "MLKD")
        self.confidence_mask = check_bool("confidence_mask", confidence_mask, "MLKD")
        self.normalize_levels = check_bool("normalize_levels", normalize_levels, "MLKD")

    @property
    def temperatures(self):
        return list(self._temperatures)

    def build_term(self, teacher, student):
        width = _check_logits("MLKD", teacher, student, self.output_selector)
        if width is not None and width < 2:
            raise ValueError(f"MLKD needs at least 2 classes, the logits have {width}.")
        super().build_term(teacher, student)

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        z_t, z_s = self._logits(teacher), self._logits(student)
        batch = ops.shape(z_t)[0]
        w = (ops.ones((batch,), "float32") if sample_weight is None
             else ops.reshape(ops.cast(sample_weight, "float32"), (-1,)))
        valid = w > 0
        w = ops.where(valid, w, 0.0)
        w_sum = ops.sum(w)
        num_classes = ops.cast(ops.shape(z_t)[-1], "float32")

        if self.confidence_mask:
            q = ops.stop_gradient(ops.softmax(z_t, axis=-1))
            confidence = ops.max(q, axis=-1)
            keep = ops.logical_and(confidence <= _masked_median(confidence, valid), valid)
            f_s = ops.divide_no_nan(ops.sum(w * ops.cast(keep, "float32")), w_sum)
            class_confidence = ops.sum(w[:, None] * q, axis=0)
            all_classes = ops.ones_like(class_confidence) > 0
            keep_c = class_confidence <= _masked_median(class_confidence, all_classes)
            f_c = ops.mean(ops.cast(keep_c, "float32"))
        else:
            f_s = f_c = 1.0

        zi_t = _standardize(z_t) if self.standardize else z_t
        zi_s = _standardize(z_s) if self.standardize else z_s
        pair = w[:, None] * w[None, :]
        if self.normalize_levels:  # the reference's sums divided by W / C, (W / C)^2
            bc_scale = ops.divide_no_nan(num_classes, ops.square(w_sum))
            cc_scale = bc_scale
        else:
            bc_scale, cc_scale = ops.divide_no_nan(1.0, w_sum), 1.0 / num_classes
        total = 0.0
        for t in self._temperatures:
            log_q_t = ops.log_softmax(zi_t / t, axis=-1)
            log_q_s = ops.log_softmax(zi_s / t, axis=-1)
            kd = (t * t) * ops.divide_no_nan(ops.sum(w * _kl_from_logits(log_q_t, log_q_s)),
                                             w_sum)
            p_t, p_s = ops.softmax(z_t / t, axis=-1), ops.softmax(z_s / t, axis=-1)
            g_t = ops.matmul(p_t, ops.transpose(p_t))
            g_s = ops.matmul(p_s, ops.transpose(p_s))
            bc = bc_scale * ops.sum(pair * ops.square(g_t - g_s))
            m_t = ops.matmul(ops.transpose(p_t), w[:, None] * p_t)
            m_s = ops.matmul(ops.transpose(p_s), w[:, None] * p_s)
            cc = cc_scale * ops.sum(ops.square(m_t - m_s))
            total = total + f_s * (kd + bc) + f_c * cc
        return ops.convert_to_tensor(total, dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update(temperatures=self.temperatures, standardize=self.standardize,
                      confidence_mask=self.confidence_mask,
                      normalize_levels=self.normalize_levels)
        return config
