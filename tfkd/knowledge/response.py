"""Response-based knowledge: what the teacher's final outputs (logits) say.

All terms here work on logits (pre-softmax outputs) of shape `(batch, classes)` and return
a per-sample loss of shape `(batch,)`; `Knowledge.loss` applies sample weights the Keras way
(`sum(loss_i * w_i) / batch`). Math is float32 whatever the model's dtype policy.
"""
from keras import ops

from tfkd.knowledge.base import Knowledge
from tfkd.knowledge.base import as_float32
from tfkd.knowledge.base import check_interval
from tfkd.knowledge.base import check_non_negative
from tfkd.knowledge.base import check_positive
from tfkd.knowledge.base import labels_to_classes_one_hot
from tfkd.knowledge.base import labels_to_one_hot

_NEG = -1e9  # added to a logit to take it out of a softmax (exp underflows to exactly 0)


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


class SoftTargets(_ResponseTerm):
    """Hinton's soft targets: the student matches the teacher's softened class distribution.

    Paper: G. Hinton, O. Vinyals, J. Dean, "Distilling the Knowledge in a Neural Network",
    NIPS 2014 Deep Learning Workshop (arXiv:1503.02531).

    Per sample, with teacher logits `z_t`, student logits `z_s` and temperature `T`:

        L_i = T^2 * KL(softmax(z_t / T) || softmax(z_s / T))
            = T^2 * sum_k q_t,k * (log q_t,k - log q_s,k)

    The `T^2` keeps the gradient scale independent of `T`. The student's task loss on the
    hard labels is the Distiller's own (`compile(loss=...)`, `student_loss_weight`).

    Args:
        temperature: softening temperature `T > 0`.
        weight: multiplier of this term in the total loss (>= 0).
        output: for multi-output models, which output holds the logits (index or name,
            the same on both sides). None for single-output models.
        name: metric prefix (`<name>_loss`).

    Example:

    >>> import numpy as np, tfkd
    >>> from tfkd.knowledge import View
    >>> term = tfkd.knowledge.SoftTargets(temperature=4.0)
    >>> t = View(np.array([[2.0, 0.5, -1.0]], "float32"))
    >>> s = View(np.array([[1.0, 1.0, 0.0]], "float32"))
    >>> round(float(term.loss(t, s)), 4)
    0.3739
    """

    default_name = "soft_targets"
    aliases = ("kd", "hinton")
    example_args = {"temperature": 3.0}

    def __init__(self, temperature=4.0, weight=1.0, output=None, name=None, **kwargs):
        super().__init__(weight=weight, output=output, name=name, **kwargs)
        self.temperature = check_positive("temperature", temperature, "SoftTargets")

    def build_term(self, teacher, student):
        _check_logits("SoftTargets", teacher, student, self.output_selector)
        super().build_term(teacher, student)

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        t = self.temperature
        log_q_t = ops.log_softmax(self._logits(teacher) / t, axis=-1)
        log_q_s = ops.log_softmax(self._logits(student) / t, axis=-1)
        return (t * t) * _kl_from_logits(log_q_t, log_q_s)

    def get_config(self):
        config = super().get_config()
        config["temperature"] = self.temperature
        return config


class DecoupledKD(_ResponseTerm):
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
    warm-up of the KD weight is a schedule, not part of the loss: ramp `weight` with a
    callback if you want it.

    Args:
        alpha: weight of TCKD (>= 0). Paper default 1.0.
        beta: weight of NCKD (>= 0). Paper default 8.0 (CIFAR-100).
        temperature: `T > 0`. Paper default 4.0.
        weight: multiplier of this term (>= 0).
        output: which output holds the logits for multi-output models.
        name: metric prefix.

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
                 name=None, **kwargs):
        super().__init__(weight=weight, output=output, name=name, **kwargs)
        self.alpha = check_non_negative("alpha", alpha, "DecoupledKD")
        self.beta = check_non_negative("beta", beta, "DecoupledKD")
        self.temperature = check_positive("temperature", temperature, "DecoupledKD")

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
        z_t = self._logits(teacher) / self.temperature
        z_s = self._logits(student) / self.temperature
        self._check_classes(z_s.shape[-1])
        num_classes = z_s.shape[-1]
        gt = labels_to_classes_one_hot(y_true, num_classes, "DecoupledKD")
        return (self.temperature ** 2) * (
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
        config.update(alpha=self.alpha, beta=self.beta, temperature=self.temperature)
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

