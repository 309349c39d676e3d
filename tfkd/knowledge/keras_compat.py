"""Use `keras.distillation` losses (Keras >= 3.12) as tfkd knowledge terms.

Users of `keras.distillation.Distiller` can hand their `LogitsDistillation` /
`FeatureDistillation` objects to `tfkd.Distiller` unchanged: they are wrapped in
`KerasDistillationLoss`, which taps their `teacher_layer_name` / `student_layer_name` in the
single forward pass of each model and calls their own `compute_loss`.
"""
import warnings

import keras
from keras import tree

from tfkd.knowledge.base import Knowledge


class KerasKLDivergenceWarning(UserWarning):
    """A `LogitsDistillation` uses the string "kl_divergence", which is not Hinton's loss."""


def _distillation_module():
    module = getattr(keras, "distillation", None)
    if module is None:  # pragma: no cover - Keras < 3.12
        raise ImportError(
            "keras.distillation needs Keras >= 3.12; this is Keras "
            f"{keras.__version__}. Use tfkd's own terms (tfkd.knowledge.SoftTargets, Hint)."
        )
    return module


def is_keras_distillation_loss(obj):
    module = getattr(keras, "distillation", None)
    return module is not None and isinstance(obj, module.DistillationLoss)


def _is_unwrapped_kl(loss_fn):
    """True for a KL loss that LogitsDistillation does not recognise as one.

    `LogitsDistillation.compute_loss` applies softmax and T^2 only when
    `isinstance(loss_fn, keras.losses.KLDivergence)`. The default `loss="kl_divergence"`
    resolves (through `keras.losses.get`) to the plain function `keras.losses.kl_divergence`,
    which that check misses: the KL is then taken between temperature-scaled *logits* (clipped
    to [eps, 1]), with no softmax and no T^2. A `LossFunctionWrapper` around that function
    has the same problem.
    """
    if loss_fn is None or isinstance(loss_fn, keras.losses.KLDivergence):
        return False
    kl_fn = keras.losses.kl_divergence
    if loss_fn is kl_fn:
        return True
    if getattr(loss_fn, "fn", None) is kl_fn:  # LossFunctionWrapper(kl_divergence)
        return True
    return getattr(loss_fn, "__name__", None) in ("kl_divergence", "kld", "KLD")


# Not in the name registry (register=False): it wraps a Keras object that a spec string cannot
# carry; `tfkd.knowledge.get(keras_loss)` builds it.
class KerasDistillationLoss(Knowledge, register=False):
    """Wraps a `keras.distillation.LogitsDistillation` / `FeatureDistillation` as a term.

    The loss is exactly the wrapped object's `compute_loss(teacher_outputs, student_outputs)`:

    - `LogitsDistillation`: called on the two models' outputs (the whole output structure, as
      Keras' own Distiller does).
    - `FeatureDistillation`: called on the outputs of `teacher_layer_name` /
      `student_layer_name` (tapped by tfkd in the one forward pass), or on the model outputs
      for a side whose layer name is None.

    `compute_loss` reduces over the batch itself, so this term returns a scalar and ignores
    `sample_weight` (as Keras' own Distiller does); use tfkd's terms for weighted losses.

    Warns with `KerasKLDivergenceWarning` when a `LogitsDistillation` uses the default
    `loss="kl_divergence"` string: in Keras 3.12-3.15 that computes KL on clipped,
    temperature-scaled logits with no softmax and no T^2 (not Hinton's loss; measured 7.31
    instead of 4.17 on the same logits). Pass `loss=keras.losses.KLDivergence()`, or use
    `tfkd.knowledge.SoftTargets(temperature=T)`.

    Args:
        distillation_loss: a `keras.distillation.DistillationLoss` instance.
        weight: multiplier of this term (>= 0).
        name: metric prefix; default "logits_distillation" / "feature_distillation".

    Example:

    >>> import numpy as np, keras, tfkd
    >>> from tfkd.knowledge import View
    >>> kd = keras.distillation.LogitsDistillation(temperature=4.0, loss=keras.losses.KLDivergence())
    >>> term = tfkd.knowledge.from_keras(kd)
    >>> t = View(np.array([[2.0, 0.5, -1.0]], "float32"))
    >>> s = View(np.array([[1.0, 1.0, 0.0]], "float32"))
    >>> round(float(term.loss(t, s)), 4)
    0.3739
    """

    default_name = "keras_distillation"

    def __init__(self, distillation_loss, weight=1.0, name=None, **kwargs):
        module = _distillation_module()
        if isinstance(distillation_loss, dict):  # from get_config
            distillation_loss = keras.saving.deserialize_keras_object(distillation_loss)
        if not isinstance(distillation_loss, module.DistillationLoss):
            raise TypeError(
                "KerasDistillationLoss wraps a keras.distillation.DistillationLoss "
                "(LogitsDistillation, FeatureDistillation, or a subclass), got "
                f"{type(distillation_loss).__name__}."
            )
        if name is None:
            if isinstance(distillation_loss, module.LogitsDistillation):
                name = "logits_distillation"
            elif isinstance(distillation_loss, module.FeatureDistillation):
                name = "feature_distillation"
        super().__init__(weight=weight, name=name, **kwargs)
        self._loss_object = distillation_loss
        if isinstance(distillation_loss, module.LogitsDistillation):
            if any(_is_unwrapped_kl(fn) for fn in tree.flatten(distillation_loss.loss)):
                warnings.warn(
                    "keras.distillation.LogitsDistillation with loss='kl_divergence' (its "
                    "default) is not Hinton's distillation loss in this Keras version: the "
                    "string resolves to a function that its isinstance(..., KLDivergence) "
                    "check misses, so it computes KL between clipped temperature-scaled "
                    "logits, with no softmax and no T^2. Pass "
                    "loss=keras.losses.KLDivergence() to LogitsDistillation, or use "
                    f"tfkd.knowledge.SoftTargets(temperature={distillation_loss.temperature}).",
                    KerasKLDivergenceWarning,
                    stacklevel=3,
                )

    @property
    def distillation_loss(self):
        return self._loss_object

    def _layer_names(self):
        return (
            getattr(self._loss_object, "teacher_layer_name", None),
            getattr(self._loss_object, "student_layer_name", None),
        )

    @property
    def teacher_features(self):
        name = self._layer_names()[0]
        return () if name is None else (name,)

    @property
    def student_features(self):
        name = self._layer_names()[1]
        return () if name is None else (name,)

    def _pick(self, view, layer_name, side):
        if view is None:
            raise ValueError(
                f"{type(self._loss_object).__name__} needs a teacher: pass `teacher=` to the "
                "Distiller."
            )
        if layer_name is None:
            return view.outputs
        if layer_name not in view.features:
            raise ValueError(
                f"{type(self._loss_object).__name__}: the {side} feature {layer_name!r} was not "
                f"tapped (available: {sorted(view.features)})."
            )
        return view.features[layer_name]

    def build_term(self, teacher, student):
        t_name, s_name = self._layer_names()
        t = self._pick(teacher, t_name, "teacher")
        s = self._pick(student, s_name, "student")
        owner = type(self._loss_object).__name__
        try:
            self._loss_object.validate_outputs(t, s)
        except ValueError as e:
            raise ValueError(
                f"{owner}: the teacher's and the student's outputs do not match: {e} "
                "Give both models the same output structure, or use tfkd terms with "
                "`output=` to pick one output."
            ) from None
        try:  # dry run on a batch of 2 zeros: catches shape mismatches before training
            self._loss_object.compute_loss(_zeros_like_spec(t), _zeros_like_spec(s))
        except Exception as e:  # noqa: BLE001 - re-raised with context
            shapes = tree.map_structure(lambda x: tuple(x.shape), (t, s))
            raise ValueError(
                f"{owner} cannot compare the teacher's {shapes[0]} with the student's "
                f"{shapes[1]}: {e}. Keras' {owner} has no adapter; tfkd.knowledge.Hint learns "
                "one (a 1x1 conv) for features of different widths."
            ) from None
        super().build_term(teacher, student)

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        t_name, s_name = self._layer_names()
        t = self._pick(teacher, t_name, "teacher")
        s = self._pick(student, s_name, "student")
        return self._loss_object.compute_loss(t, s)

    def get_config(self):
        config = super().get_config()
        config["distillation_loss"] = keras.saving.serialize_keras_object(self._loss_object)
        return config


def _zeros_like_spec(structure):
    """Concrete zeros for a structure of symbolic tensors: batch 2, other unknown dims 1."""

    def zeros(x):
        shape = tuple(2 if i == 0 else (1 if d is None else d) for i, d in enumerate(x.shape))
        return keras.ops.zeros(shape, dtype=getattr(x, "dtype", None) or "float32")

    return tree.map_structure(zeros, structure)


def from_keras(distillation_loss, weight=1.0, name=None):
    """Wraps a `keras.distillation` loss as a tfkd term (see `KerasDistillationLoss`)."""
    return KerasDistillationLoss(distillation_loss, weight=weight, name=name)
