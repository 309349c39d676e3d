"""The contract every knowledge term follows, and the views of a forward pass it receives."""
import math

import keras
from keras import ops


class View:
    """What one side of a step (teacher or student) produced: its outputs and tapped features.

    Attributes:
        outputs: the model's outputs, as the model returns them (a tensor, list or dict).
        features: dict mapping each requested feature name to its tensor.
    """

    __slots__ = ("outputs", "features")

    def __init__(self, outputs, features=None):
        self.outputs = outputs
        self.features = dict(features or {})

    def output(self, selector=None):
        """Returns one output: the only one, or the one `selector` (index or name) picks."""
        outs = self.outputs
        if selector is None:
            if isinstance(outs, dict):
                if len(outs) != 1:
                    raise ValueError(
                        f"The model has {len(outs)} outputs ({sorted(outs)}); tell the knowledge "
                        "term which one to use with its `output=` argument (a name or index)."
                    )
                return next(iter(outs.values()))
            if isinstance(outs, (list, tuple)):
                if len(outs) != 1:
                    raise ValueError(
                        f"The model has {len(outs)} outputs; tell the knowledge term which one "
                        "to use with its `output=` argument (an index)."
                    )
                return outs[0]
            return outs
        if isinstance(outs, dict):
            if selector not in outs:
                raise ValueError(
                    f"Output {selector!r} does not exist; the model's outputs are {sorted(outs)}."
                )
            return outs[selector]
        if isinstance(outs, (list, tuple)):
            if isinstance(selector, str) or not -len(outs) <= selector < len(outs):
                raise ValueError(
                    f"Output {selector!r} does not exist: the model returns a list of "
                    f"{len(outs)} outputs, pick one by index 0..{len(outs) - 1}."
                )
            return outs[selector]
        # A single-output side (often the teacher) has nothing to choose: the selector
        # disambiguates the multi-output side only.
        return outs


class Knowledge(keras.layers.Layer):
    """Base class of a knowledge term: one loss that moves knowledge from teacher to student.

    A term names the features it needs (`teacher_features`, `student_features`; the
    Distiller taps them in the single forward pass of each model), may create trainable
    adapters in `build_term` (the Distiller trains and checkpoints them, and never exports
    them with the student), and computes its loss in `compute`.

    `compute` returns either a per-sample loss of shape `(batch,)` (sample weights are then
    applied as in Keras: `sum(loss * sample_weight) / batch`), or a scalar for terms that look
    at the whole batch (relation-based terms take `sample_weight` into account themselves).

    Subclasses set `requires_teacher = False` when they work with no teacher (teacher-free
    KD) and `requires_labels = True` when they need the ground truth.

    Args:
        weight: non-negative multiplier of this term in the total loss.
        name: also the metric name prefix: the term's loss is reported as `<name>_loss`.
    """

    requires_teacher = True
    requires_labels = False
    default_name = "knowledge"

    def __init__(self, weight=1.0, name=None, **kwargs):
        kwargs.setdefault("dtype", "float32")  # losses stay float32 under mixed precision
        super().__init__(name=name or self.default_name, **kwargs)
        self.weight = check_non_negative("weight", weight, type(self).__name__)

    # Features this term needs, by layer name (or "nested_model/layer" path).
    @property
    def teacher_features(self):
        return ()

    @property
    def student_features(self):
        return ()

    def build_term(self, teacher, student):
        """Validates shapes and creates adapters, once, before training.

        Args:
            teacher: `View` of `keras.KerasTensor`s (symbolic shapes) of the teacher, or None.
            student: `View` of `keras.KerasTensor`s of the student.
        """
        self.built = True

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        """Returns the unweighted loss: shape (batch,) or a scalar. Subclasses implement."""
        raise NotImplementedError(f"{type(self).__name__} must implement `compute`.")

    def loss(self, teacher, student, y_true=None, sample_weight=None):
        """The term's loss reduced over the batch, before `weight` is applied."""
        value = self.compute(teacher, student, y_true=y_true, sample_weight=sample_weight)
        value = ops.cast(value, "float32")
        if len(value.shape) == 0:
            return value
        if sample_weight is not None:
            sw = ops.cast(ops.reshape(sample_weight, (-1,)), "float32")
            value = value * sw
        return ops.sum(value) / ops.cast(ops.shape(value)[0], "float32")

    def call(self, *args, **kwargs):  # pragma: no cover - terms are used through `loss`
        raise TypeError(
            f"{type(self).__name__} is a knowledge term: pass it to tfkd.Distiller(knowledge=[...]) "
            "or call `term.loss(teacher_view, student_view, y_true, sample_weight)`."
        )

    def get_config(self):
        config = super().get_config()
        config.pop("trainable", None)
        config.pop("dtype", None)
        config["weight"] = self.weight
        return config


def check_non_negative(name, value, owner):
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"{owner}: `{name}` must be a finite number >= 0, got {value}. "
            f"Use 0 to switch the term off."
        )
    return value


def check_positive(name, value, owner):
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{owner}: `{name}` must be a finite number > 0, got {value}.")
    return value


def as_float32(x):
    return ops.cast(x, "float32")


def labels_to_one_hot(y_true, num_classes, owner):
    """Accepts sparse labels (batch,) / (batch, 1) or one-hot / soft labels (batch, classes)."""
    if y_true is None:
        raise ValueError(
            f"{owner} needs the ground-truth labels: pass (x, y) to fit/evaluate."
        )
    y = ops.convert_to_tensor(y_true)
    if len(y.shape) >= 2 and y.shape[-1] == num_classes and num_classes > 1:
        return ops.cast(y, "float32")
    y = ops.reshape(ops.cast(y, "int32"), (-1,))
    return ops.one_hot(y, num_classes, dtype="float32")
