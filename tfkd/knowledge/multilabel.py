"""Response-based knowledge for multi-label (sigmoid) outputs."""
from keras import ops

from tfkd.knowledge.base import Knowledge
from tfkd.knowledge.base import as_float32
from tfkd.knowledge.base import check_positive


class BinarySoftTargets(Knowledge):
    """Per-class binary soft targets for multi-label classifiers with sigmoid outputs.

    Each of the K classes is its own binary problem, so Hinton's softened softmax over
    classes does not apply: the student matches, class by class, the teacher's softened
    Bernoulli distribution. With logits `z`, temperature `T` and `p = sigmoid(z / T)`:

        L_i = T^2 / K * sum_k KL(Bern(p_t,k) || Bern(p_s,k))
            = T^2 / K * sum_k [p_t log(p_t / p_s) + (1 - p_t) log((1 - p_t) / (1 - p_s))]

    computed from log-sigmoids for stability. `T^2` keeps the gradient scale independent of
    `T`, as in SoftTargets. Both models must output logits (no sigmoid inside).

    Args:
        temperature: softening temperature `T > 0`.
        weight: multiplier of this term (>= 0).
        name: metric prefix (`<name>_loss`).

    Example:

    >>> import numpy as np
    >>> from tfkd.knowledge import View
    >>> from tfkd.knowledge.multilabel import BinarySoftTargets
    >>> term = BinarySoftTargets(temperature=1.0)
    >>> t = View(np.array([[2.0, -2.0]], "float32"))
    >>> round(float(term.loss(t, t)), 6)
    0.0
    """

    default_name = "binary_soft_targets"
    example_args = {"temperature": 3.0}
    example_inputs = "multilabel"

    def __init__(self, temperature=2.0, weight=1.0, name=None, **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)
        self.temperature = check_positive("temperature", temperature, "BinarySoftTargets")

    def build_term(self, teacher, student):
        s, t = student.output(), teacher.output()
        if len(s.shape) != 2 or s.shape != t.shape and None not in (s.shape[-1], t.shape[-1]):
            raise ValueError(
                f"BinarySoftTargets expects teacher and student logits of the same shape "
                f"(batch, classes); got teacher {tuple(t.shape)} and student {tuple(s.shape)}.")
        super().build_term(teacher, student)

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        t = self.temperature
        zt = as_float32(teacher.output()) / t
        zs = as_float32(student.output()) / t
        p_t = ops.sigmoid(zt)
        log_pt, log_1mpt = ops.log_sigmoid(zt), ops.log_sigmoid(-zt)
        log_ps, log_1mps = ops.log_sigmoid(zs), ops.log_sigmoid(-zs)
        kl = p_t * (log_pt - log_ps) + (1.0 - p_t) * (log_1mpt - log_1mps)
        return (t * t) * ops.mean(kl, axis=-1)

    def get_config(self):
        config = super().get_config()
        config["temperature"] = self.temperature
        return config
