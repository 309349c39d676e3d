"""Knowledge terms: what a student learns from its teacher, one module per family.

- response (final outputs): SoftTargets, DecoupledKD, MLKD, TeacherFree, LabelSmoothedKD;
  multilabel: BinarySoftTargets (sigmoid outputs)
- feature (intermediate representations): Hint, AttentionTransfer, FeatureNormalizedKD, VID,
  NST, OFD
- relation (how samples relate): RelationalKD, SimilarityPreserving, PKT, DIST
- review: ReviewKD (attention-based fusion of the student's stages, hierarchical context loss)
- contrastive (which sample is which): CRD, with a FIFO memory of past embeddings
- dense (segmentation maps): PixelSoftTargets, ChannelWiseKD (CWD), PairwiseKD (SKD),
  CrossImageRelationalKD (CIRKD, with an optional memory of past batches)
- detection (SSD detectors, `tfkd.Anchors`): DetectionSoftTargets, BoundedRegression,
  ForegroundImitation (FGFI), AttentionGuided (FBKD), OldClassDistillation (incremental)
- restoration (image-to-image, super-resolution): ReconstructionKD, FeatureAffinityKD (FAKD)
- embedding (face recognition, re-identification): EmbeddingKD, EvaluationOrientedKD (EKD),
  ExclusivityConsistencyKD (EC-KD's hardness-aware consistency)
- keras_compat: `keras.distillation` losses as terms (KerasDistillationLoss, from_keras)

Terms register by name when their class is defined: `get("dkd:temperature=4")` builds one,
`get_list("soft_targets,hint:student_layer=s3,teacher_layer=t3")` a list (as flags give it),
`available()` maps names to classes and `describe()` lists them with their arguments.
`get` (also `as_knowledge`) turns anything the Distiller accepts in `knowledge=[...]` into a
term.
"""
import importlib as _importlib
import pkgutil as _pkgutil

from tfkd.knowledge.base import Knowledge
from tfkd.knowledge.base import View
from tfkd.knowledge.base import warmup
from tfkd.knowledge.keras_compat import KerasDistillationLoss
from tfkd.knowledge.keras_compat import KerasKLDivergenceWarning
from tfkd.knowledge.keras_compat import from_keras
from tfkd.knowledge.keras_compat import is_keras_distillation_loss
from tfkd.knowledge.registry import available
from tfkd.knowledge.registry import describe
from tfkd.knowledge.registry import get
from tfkd.knowledge.registry import get_list
from tfkd.knowledge.registry import spec_arguments
from tfkd.knowledge.registry import split_specs

# Every family module of this package is imported, which registers its terms; each registered
# term is then exported here by its class name (tfkd.knowledge.SoftTargets, ...). So a new
# term is one class in its family module, and a new family one module: nothing to list here.
for _module in _pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        _importlib.import_module(f"{__name__}.{_module.name}")
for _cls in available().values():
    globals()[_cls.__name__] = _cls

as_knowledge = get  # the name the trainers use; `get` is the Keras-like one

__all__ = sorted([
    "KerasDistillationLoss",
    "KerasKLDivergenceWarning",
    "Knowledge",
    "View",
    "as_knowledge",
    "available",
    "describe",
    "from_keras",
    "get",
    "get_list",
    "spec_arguments",
    "split_specs",
    "warmup",
    *(cls.__name__ for cls in available().values()),
])
del _module, _cls
