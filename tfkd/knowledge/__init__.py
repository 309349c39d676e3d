"""Knowledge terms: what a student learns from its teacher, one module per family.

- response (final outputs): SoftTargets, DecoupledKD, TeacherFree, LabelSmoothedKD;
  multilabel: BinarySoftTargets (sigmoid outputs)
- feature (intermediate representations): Hint, AttentionTransfer, FeatureNormalizedKD
- relation (how samples relate): RelationalKD, SimilarityPreserving
- keras_compat: `keras.distillation` losses as terms (KerasDistillationLoss, from_keras)

`as_knowledge(obj)` turns anything the Distiller accepts in `knowledge=[...]` into a term.
"""
from tfkd.knowledge.base import Knowledge
from tfkd.knowledge.base import View
from tfkd.knowledge.feature import AttentionTransfer
from tfkd.knowledge.feature import FeatureNormalizedKD
from tfkd.knowledge.feature import Hint
from tfkd.knowledge.keras_compat import KerasDistillationLoss
from tfkd.knowledge.keras_compat import KerasKLDivergenceWarning
from tfkd.knowledge.keras_compat import from_keras
from tfkd.knowledge.keras_compat import is_keras_distillation_loss
from tfkd.knowledge.multilabel import BinarySoftTargets
from tfkd.knowledge.relation import RelationalKD
from tfkd.knowledge.relation import SimilarityPreserving
from tfkd.knowledge.response import DecoupledKD
from tfkd.knowledge.response import LabelSmoothedKD
from tfkd.knowledge.response import SoftTargets
from tfkd.knowledge.response import TeacherFree


def as_knowledge(obj):
    """Returns `obj` as a knowledge term.

    A `Knowledge` is returned as is; a `keras.distillation.LogitsDistillation` /
    `FeatureDistillation` (any `DistillationLoss`) is wrapped in `KerasDistillationLoss`.
    Anything else raises a TypeError that lists what is accepted.
    """
    if isinstance(obj, Knowledge):
        return obj
    if is_keras_distillation_loss(obj):
        return KerasDistillationLoss(obj)
    if isinstance(obj, type) and issubclass(obj, Knowledge):
        raise TypeError(
            f"Got the class {obj.__name__}, not an instance: write {obj.__name__}(...) "
            "in `knowledge=[...]`."
        )
    raise TypeError(
        f"{obj!r} (a {type(obj).__name__}) is not a knowledge term. Pass tfkd.knowledge terms "
        "(e.g. tfkd.knowledge.SoftTargets(temperature=4.0), Hint('student_layer', "
        "'teacher_layer')) or keras.distillation.LogitsDistillation / FeatureDistillation "
        "instances."
    )


__all__ = [
    "AttentionTransfer",
    "BinarySoftTargets",
    "DecoupledKD",
    "FeatureNormalizedKD",
    "Hint",
    "KerasDistillationLoss",
    "KerasKLDivergenceWarning",
    "Knowledge",
    "LabelSmoothedKD",
    "RelationalKD",
    "SimilarityPreserving",
    "SoftTargets",
    "TeacherFree",
    "View",
    "as_knowledge",
    "from_keras",
]
