"""A recipe run's configuration: the `Config` dataclass, the absl flags that fill it, and the
checks of its values that need no data (each run before any training).

Every `Config` field is a flag of the same name. A recipe module calls
`define_flags(**its_defaults)` at import, and its `main` calls `from_flags()`. The knowledge
mix (`--knowledge`) is a list of `tfkd.knowledge` registry specs. The older flags
`--temperature`, `--kd_weight`, `--feature_weight` and `--feature_pairs` fill in what a spec
leaves out (see `knowledge_terms`).
"""
from __future__ import annotations

import dataclasses
import pathlib

from absl import flags

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
EXPORTS = ("int8", "float32", "none")
# The client the exported file is for (`tfkd.tflite.convert(target=...)`).
TARGETS = ("mediapipe", "coral", "litert")


class RecipeError(ValueError):
    """A recipe input that cannot be used (the message says what to change)."""


@dataclasses.dataclass
class Config:
    """Every knob of a recipe run; the flags of the same names fill it (`from_flags`)."""

    data: str = ""
    download: bool = False
    data_dir: str | None = None
    image_size: int = 0
    max_train: int = 0
    max_test: int = 0
    teacher: str = ""
    teacher_arch: str = "resnet_tiny"
    teacher_width: float = 2.0
    teacher_epochs: int = 10
    student: str = "mobile_cnn"
    student_width: float = 1.0
    knowledge: str = "soft_targets"
    temperature: float = 4.0
    kd_weight: float = 1.0
    feature_pairs: tuple = ("stage3:stage3",)
    feature_weight: float = 1.0
    student_loss_weight: float = 1.0
    warmup_epochs: float = 2.0
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 2e-3
    augment: bool = False
    cache_teacher: bool = False
    baseline: bool = True
    qat_epochs: int = 0
    scale: int = 2
    bn_momentum: float = 0.0
    bn_recompute_batches: int = 32
    export: str = "int8"
    target: str = "mediapipe"
    latency: bool = True
    seed: int = 0
    output_dir: str = "runs/recipe"
    verbose: int = 2


def _knowledge_help():
    # The registered terms are listed from the registry itself, so `--helpfull` names every
    # term the installed tfkd has, with its arguments.
    import tfkd.knowledge

    return ("Knowledge mix: comma-separated tfkd.knowledge registry specs, name[:arg=value,...], "
            "e.g. 'soft_targets,hint:student_layer=stage3,teacher_layer=stage3' or "
            "'dkd:temperature=4,beta=8'. --temperature, --kd_weight, --feature_weight and "
            "--feature_pairs fill in the arguments a spec does not set. Registered terms:\n"
            + tfkd.knowledge.describe())


_HELP = {
    "data": "Data: an .npz file (x_train/y_train/x_test/y_test or MedMNIST's train_images/...), "
            "an image folder (root/<class>/*.jpg or root/{train,test}/<class>/...), or a tfds "
            "name (needs --download on first use).",
    "download": "Let tfds download the data set (needs internet).",
    "data_dir": "tfds data folder (default: tfds' ~/tensorflow_datasets).",
    "image_size": "Resize images of folders / tfds to this square size (0: the recipe's default).",
    "max_train": "Use only the first N training images (0: all).",
    "max_test": "Use only the first N test images (0: all).",
    "teacher": "Path of a trained teacher (.keras). Empty: train one from the zoo "
               "(--teacher_arch, --teacher_width, --teacher_epochs) and save it in the report.",
    "teacher_arch": "Zoo architecture of a teacher trained here (see --student).",
    "teacher_width": "Width multiplier of a teacher trained here.",
    "teacher_epochs": "Epochs of a teacher trained here.",
    "student": "Student from tfkd.students: mobile_cnn, resnet_tiny or mobilenet_tiny.",
    "student_width": "Width multiplier of the student (channels x width).",
    "knowledge": _knowledge_help,
    "temperature": "Temperature of the terms that take one (soft_targets, dkd, "
                   "binary_soft_targets, ...) when their spec does not set it.",
    "kd_weight": "Weight of the response-based terms (those outside tfkd.knowledge.feature and "
                 ".relation) when their spec does not set it.",
    "feature_pairs": "student_layer:teacher_layer pairs, comma-separated, for the feature terms "
                     "(hint, attention, similarity) whose spec names no layers: one term per "
                     "pair (attention takes them all).",
    "feature_weight": "Weight of the feature- and relation-based terms when their spec does not "
                      "set it.",
    "student_loss_weight": "Weight of the student's task loss on the labels during distillation.",
    "warmup_epochs": "Epochs that `{warmup_steps}` in a --knowledge spec stands for (e.g. "
                     "weight=warmup(5.0,{warmup_steps}) ramps a weight up over them), filled "
                     "in from the training set's size and --batch_size.",
    "epochs": "Epochs of the student (alone and distilled: the same budget).",
    "batch_size": "Batch size.",
    "learning_rate": "Peak learning rate (Adam, cosine decay).",
    "augment": "Random flips and shifts in the input pipeline (teacher and student see the same "
               "augmented batch). Not compatible with --cache_teacher.",
    "cache_teacher": "Compute the teacher's outputs once and reuse them every epoch "
                     "(deterministic pipelines only: refused with --augment).",
    "baseline": "Also train the student alone, for the comparison in the report (and to warn "
                "when the teacher scores below it).",
    "qat_epochs": "Epochs of quantization-aware distillation after distillation (0: post-"
                  "training int8 quantization only).",
    "scale": "Upscaling factor of the super-resolution recipe (2, 3 or 4).",
    "bn_momentum": "BatchNormalization momentum of the zoo models trained here (0: chosen from "
                   "the planned steps with tfkd.batch_norm.momentum_for_steps, 0.9-0.99).",
    "bn_recompute_batches": "Re-estimate the BatchNormalization statistics of every model "
                            "trained here over this many training batches (weights fixed) "
                            "before evaluation and export (0: keep the moving averages).",
    "export": "Export the student as: " + ", ".join(EXPORTS) + ".",
    "target": "The client the exported .tflite is for: mediapipe (MediaPipe Tasks / an Android "
              "app: uint8 in, uint8 or float out, metadata with the labels inside the file, "
              "checked by running it in MediaPipe), coral (Edge TPU: uint8 in and out; needs "
              "--export=int8), litert (LiteRT in your own code: uint8 in, int8 out).",
    "latency": "Convert the float models too and time all of them with the TFLite runtime.",
    "seed": "Random seed (weights, shuffling, augmentation).",
    "output_dir": "Report folder (created; must be writable).",
    "verbose": "Keras verbosity of fit (0 silent, 1 progress bar, 2 one line per epoch).",
}


def define_flags(**defaults):
    """Defines every `Config` field as an absl flag (once per process), with recipe defaults."""
    for field in dataclasses.fields(Config):
        name = field.name
        default = defaults.get(name, field.default)
        if name in flags.FLAGS:
            flags.FLAGS.set_default(name, list(default) if isinstance(default, tuple) else default)
            continue
        help_text = _HELP[name]() if callable(_HELP[name]) else _HELP[name]
        if field.type == "bool":
            flags.DEFINE_bool(name, default, help_text)
        elif field.type == "int":
            flags.DEFINE_integer(name, default, help_text)
        elif field.type == "float":
            flags.DEFINE_float(name, default, help_text)
        elif field.type == "tuple":
            flags.DEFINE_list(name, list(default), help_text)
        elif name == "export":
            flags.DEFINE_enum(name, default, EXPORTS, help_text)
        elif name == "target":
            flags.DEFINE_enum(name, default, TARGETS, help_text)
        else:  # `knowledge` is a string too: its specs hold commas of their own
            flags.DEFINE_string(name, default, help_text)


def from_flags(**overrides):
    """A Config from the parsed flags; `overrides` replace flag values."""
    values = {f.name: getattr(flags.FLAGS, f.name) for f in dataclasses.fields(Config)}
    values["feature_pairs"] = tuple(v.strip() for v in values["feature_pairs"] if v.strip())
    values.update(overrides)
    return Config(**values)


def check(config):
    """Raises RecipeError (or `tfkd.data.RandomPipelineError`) for flag values that cannot work
    together; none of these checks needs the data."""
    from tfkd import data

    if config.export not in EXPORTS:
        raise RecipeError(f"--export={config.export!r}: use one of {EXPORTS}.")
    if config.target not in TARGETS:
        raise RecipeError(f"--target={config.target!r}: use one of {TARGETS}.")
    if config.target == "coral" and config.export != "int8":
        raise RecipeError(f"--target=coral with --export={config.export}: the Edge TPU runs "
                          "only full-integer files; use --export=int8.")
    if config.cache_teacher and config.augment:
        raise data.RandomPipelineError(
            "--cache_teacher with --augment: caching would freeze one random view of each "
            "image for the teacher. Drop --cache_teacher (teacher and student then see the "
            "same augmented batch every step) or drop --augment.")
    if config.bn_momentum and not 0.0 < config.bn_momentum < 1.0:
        raise RecipeError(f"--bn_momentum={config.bn_momentum}: use a value in (0, 1), or 0 to "
                          "choose it from the planned steps.")
    if config.bn_recompute_batches < 0:
        raise RecipeError(f"--bn_recompute_batches={config.bn_recompute_batches}: use 0 (off) "
                          "or a number of batches.")
    for name in ("epochs", "batch_size"):
        if getattr(config, name) < 1:
            raise RecipeError(f"--{name}={getattr(config, name)}: use 1 or more.")
    if not config.warmup_epochs >= 0:
        raise RecipeError(f"--warmup_epochs={config.warmup_epochs}: use 0 or more.")
    feature_pairs(config)


def prepare_output_dir(path):
    """Creates the report folder and checks it is writable, before any training."""
    path = pathlib.Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise RecipeError(
            f"Cannot write the report folder '{path}' ({e.strerror or e}). Pick another "
            "--output_dir.") from e
    return path


# -- knowledge -------------------------------------------------------------------------------
def feature_pairs(config):
    """`--feature_pairs` as (student_layer, teacher_layer) tuples."""
    pairs = []
    for spec in config.feature_pairs:
        if spec.count(":") != 1 or not all(spec.split(":")):
            raise RecipeError(
                f"--feature_pairs entry {spec!r} must be student_layer:teacher_layer.")
        pairs.append(tuple(spec.split(":")))
    return pairs


# In a --knowledge spec: the steps of --warmup_epochs (as in benchmarks/kd_cifar10.py's rows).
WARMUP_STEPS = "{warmup_steps}"


def knowledge_terms(config, steps_per_epoch=None):
    """The knowledge terms of `--knowledge`, built by the `tfkd.knowledge` registry.

    `{warmup_steps}` in the specs becomes `--warmup_epochs` x `steps_per_epoch` steps (at
    least 1; 1 when `steps_per_epoch` is None, as when the specs are checked before the data
    is loaded).

    Each spec is `name[:argument=value,...]` (`tfkd.knowledge.get_list`). The older flags fill
    in the arguments a spec does not set, if the term takes them: `--temperature` for
    `temperature`, `--kd_weight` (response terms) or `--feature_weight` (terms of
    `tfkd.knowledge.feature` and `.relation`) for `weight`, and `--feature_pairs` for the
    layers a feature term needs and its spec does not name (one `hint` / `similarity` per
    pair, one `attention` over all of them). So `--knowledge=soft_targets,hint
    --temperature=2` builds the same terms as
    `--knowledge=soft_targets:temperature=2,hint:student_layer=stage3,teacher_layer=stage3`.
    """
    import tfkd.knowledge as registry
    from tfkd.knowledge import base

    spec = config.knowledge if isinstance(config.knowledge, str) else ",".join(config.knowledge)
    steps = max(1, round(config.warmup_epochs * steps_per_epoch)) if steps_per_epoch else 1
    spec = spec.replace(WARMUP_STEPS, str(steps))
    if not spec.strip():
        raise RecipeError("--knowledge is empty: name at least one term, e.g. soft_targets.")
    terms = []
    try:
        for term_spec in registry.split_specs(spec):
            cls = base.lookup(term_spec.partition(":")[0].strip())
            terms += [registry.get(s) for s in _with_flag_defaults(cls, term_spec, config)]
    except (ValueError, TypeError) as e:
        raise RecipeError(f"--knowledge={spec!r}: {e}") from e
    return terms


def _with_flag_defaults(cls, term_spec, config):
    """The spec(s) of one term, with the flags' values for the arguments it leaves out."""
    import inspect

    import tfkd.knowledge as registry

    name, given = registry.spec_arguments(term_spec)
    given = set(given)
    args = term_spec.partition(":")[2]
    params = dict(list(inspect.signature(cls.__init__).parameters.items())[1:])
    required = {k for k, p in params.items() if p.default is inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    extra = []
    if "temperature" in params and "temperature" not in given:
        extra.append(f"temperature={config.temperature}")
    if "weight" in params and "weight" not in given:
        family = cls.__module__.rsplit(".", 1)[-1]
        weight = config.feature_weight if family in ("feature", "relation") else config.kd_weight
        extra.append(f"weight={weight}")
    if "pairs" in required and "pairs" not in given:
        extra.append(f"pairs={feature_pairs(config)!r}")
    layers = ("student_layer", "teacher_layer")
    per_pair = [[]]
    if set(layers) <= required and not set(layers) & given:
        per_pair = [[f"student_layer={s}", f"teacher_layer={t}"] for s, t in feature_pairs(config)]
    base = [a for a in [args.strip()] + extra if a]
    return [name + (":" + ",".join(base + layer) if base + layer else "")
            for layer in per_pair]
