"""The contract every knowledge term follows, and the views of a forward pass it receives.

Defining a public subclass of `Knowledge` with its own `default_name` registers it: with Keras
serialization (`tfkd>ClassName`) and, by that name, in the registry behind
`tfkd.knowledge.get` / `get_list` / `available` / `describe`. Nothing else needs editing.
"""
import difflib
import gc
import math
import re
import weakref

import keras
import numpy as np
import tensorflow as tf
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

    Registration: a public subclass that sets its own `default_name` (snake_case, also its
    metric prefix) is registered under that name, its class name and its `aliases`, so that
    `tfkd.knowledge.get("dkd:beta=4")` builds it. It also declares, for the contract tests
    that every registered term passes, `example_args` (constructor arguments of a working
    instance on the `example_inputs` views, see `example_views`). Pass `register=False` in
    the class statement to keep a public term out of the name registry
    (`class MyTerm(Knowledge, register=False)`); Keras serialization still works.

    Ownership: a term belongs to one trainer (its adapters are built for one student); the
    trainer calls `claim(self)` when it is constructed.

    Args:
        weight: non-negative multiplier of this term in the total loss, or a schedule of it:
            a `keras.optimizers.schedules.LearningRateSchedule` evaluated at the trainer's
            optimizer step (`warmup(weight, steps)` ramps it up linearly, as DKD needs; in a
            spec, `dkd:weight=warmup(1.0,2000)`). Every term and every trainer takes a
            schedule the same way: the trainers read `current_weight()`.
        name: also the metric name prefix: the term's loss is reported as `<name>_loss`.
    """

    requires_teacher = True
    requires_labels = False
    default_name = "knowledge"
    aliases = ()
    # For the contract tests and the registry: constructor arguments of a working instance
    # on the example views of kind `example_inputs` (a key of EXAMPLE_INPUTS).
    example_args = None
    example_inputs = "classifier"

    def __init_subclass__(cls, register=True, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__name__.startswith("_"):
            return  # shared plumbing (_ResponseTerm), not a term
        # Keras serialization by merely defining the class; "tfkd>Name" for our own terms,
        # "<module>>Name" for a user's, so that the two never collide.
        package = "tfkd" if cls.__module__.split(".")[0] == "tfkd" else cls.__module__
        keras.saving.register_keras_serializable(package=package)(cls)
        if register and "default_name" in cls.__dict__:
            _register(cls)

    def __init__(self, weight=1.0, name=None, **kwargs):
        kwargs.setdefault("dtype", "float32")  # losses stay float32 under mixed precision
        super().__init__(name=name or self.default_name, **kwargs)
        self.weight = check_weight(weight, type(self).__name__)

    # Features this term needs, by layer name (or "nested_model/layer" path).
    # Terms that tap one layer per side store it as `teacher_layer` / `student_layer` (None:
    # the outputs), terms that tap a list as `teacher_layers` / `student_layers`; terms that
    # tap otherwise override these.
    @property
    def teacher_features(self):
        return _tapped(self, "teacher")

    @property
    def student_features(self):
        return _tapped(self, "student")

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

    def loss(self, teacher, student, y_true=None, sample_weight=None, training=None):
        """The term's loss reduced over the batch, before `weight` is applied.

        `training` is False on evaluation batches (the trainers pass it); a term with state
        that training updates (CIRKD's memory) reads it as `self.training_step` in `compute`
        and leaves its state alone when it is False. None means a training step.
        """
        self.training_step = training is not False
        try:
            value = self.compute(teacher, student, y_true=y_true, sample_weight=sample_weight)
        finally:
            self.training_step = True
        value = ops.cast(value, "float32")
        if len(value.shape) == 0:
            return value
        if sample_weight is not None:
            sw = ops.cast(ops.reshape(sample_weight, (-1,)), "float32")
            value = value * sw
        return ops.sum(value) / ops.cast(ops.shape(value)[0], "float32")

    def current_weight(self):
        """This step's weight: `weight`, or its schedule's value at the trainer's step."""
        return self.at_step(self.weight)

    def at_step(self, value):
        """`value`, or, for a schedule, its float32 value at the trainer's optimizer step.

        The step is that of the trainer that claimed the term (its `optimizer.iterations`),
        so a schedule follows `fit` across epochs, resumes with the optimizer's checkpoint,
        and needs no callback. Before a trainer with an optimizer owns the term, step 0.
        """
        if not isinstance(value, keras.optimizers.schedules.LearningRateSchedule):
            return value
        ref = getattr(self, "_tfkd_owner", None)
        owner = ref() if ref is not None else None
        optimizer = getattr(owner, "optimizer", None)
        step = optimizer.iterations if optimizer is not None else ops.zeros((), "int64")
        return ops.cast(value(step), "float32")

    def call(self, *args, **kwargs):  # pragma: no cover - terms are used through `loss`
        raise TypeError(
            f"{type(self).__name__} is a knowledge term: pass it to tfkd.Distiller(knowledge=[...]) "
            "or call `term.loss(teacher_view, student_view, y_true, sample_weight)`."
        )

    def get_config(self):
        config = super().get_config()
        config.pop("trainable", None)
        config.pop("dtype", None)
        config["weight"] = serialize_schedule(self.weight)
        return config

    def claim(self, owner, inherit_from=None):
        """Records `owner` (a Distiller or scheme) as the one trainer of this term.

        A term's adapters are built for, and trained with, one student: two Distillers that
        share a term would silently share (and fight over) those weights. Claiming again
        with the same owner is a no-op; with another owner that is still alive it raises,
        unless `inherit_from` is the current owner (ownership then moves: a Distiller built
        from another one on purpose, e.g. by `quantization_aware()`, shares its adapters).
        Only a weak reference is kept, so a garbage-collected owner frees the term.

        Args:
            owner: the trainer that uses this term.
            inherit_from: the trainer this one deliberately takes the term over from.

        Example:

        >>> import tfkd
        >>> class Trainer:
        ...     name = "first"
        >>> term, first, second = tfkd.knowledge.SoftTargets(), Trainer(), Trainer()
        >>> term.claim(first)
        >>> term.claim(second)
        Traceback (most recent call last):
        ...
        ValueError: SoftTargets 'soft_targets' already belongs to 'first' (Trainer)...
        >>> term.claim(second, inherit_from=first)  # ownership moves on purpose
        """
        ref = getattr(self, "_tfkd_owner", None)
        current = ref() if ref is not None else None
        if current is not None and current is not owner and current is not inherit_from:
            # Keras models hold reference cycles: a trainer the user dropped may only be
            # freed by the cycle collector. Ask it once before calling the term taken.
            del current
            gc.collect()
            current = ref()
        if current is not None and current is not owner and current is not inherit_from:
            first = getattr(current, "name", None) or type(current).__name__
            raise ValueError(
                f"{type(self).__name__} {self.name!r} already belongs to {first!r} "
                f"({type(current).__name__}): a term and its adapters are trained for one "
                "student, so one term cannot serve two trainers. Pass a fresh term to each "
                "Distiller, e.g. `type(term).from_config(term.get_config())`."
            )
        try:
            ref = weakref.ref(owner)
        except TypeError:  # an owner without weak references (e.g. a bare object()) is kept
            ref = _StrongRef(owner)
        # Past Keras' attribute tracking: an owner reference is no state of the layer.
        object.__setattr__(self, "_tfkd_owner", ref)

    @classmethod
    def example_views(cls, batch=6, seed=0):
        """Small random inputs on which `cls(**cls.example_args)` works.

        Returns `(teacher, student, y_true)`: two `View`s of NumPy arrays and the labels,
        of the kind `cls.example_inputs` (see `EXAMPLE_INPUTS`). A term that needs another
        kind of input overrides this classmethod. The contract tests use it, and so can a
        user who wants to see a term's numbers.

        Example:

        >>> import tfkd
        >>> teacher, student, y = tfkd.knowledge.SoftTargets.example_views(batch=2)
        >>> teacher.outputs.shape, sorted(student.features), y.shape
        ((2, 5), ['student_map', 'student_vec'], (2,))
        """
        try:
            make = EXAMPLE_INPUTS[cls.example_inputs]
        except (KeyError, TypeError):
            raise ValueError(
                f"{cls.__name__}.example_inputs is {cls.example_inputs!r}; it must be one of "
                f"{sorted(EXAMPLE_INPUTS)}, or {cls.__name__} must override `example_views`."
            ) from None
        return make(np.random.default_rng(seed), batch)


def _tapped(term, side):
    """`<side>_layers` (a list, duplicates once) or `<side>_layer` (None: the outputs)."""
    layers = getattr(term, f"{side}_layers", None)
    if layers is not None:
        return tuple(dict.fromkeys(layers))
    layer = getattr(term, f"{side}_layer", None)
    return () if layer is None else (layer,)


class _StrongRef:
    """Looks like a weakref.ref for owners that do not support weak references."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __call__(self):
        return self.obj


# --------------------------------------------------------------------------------------------
# Example inputs, by kind: what the contract tests feed each registered term.

EXAMPLE_CLASSES = 5


def _classifier_inputs(rng, batch):
    """Logits of a 5-class classifier, tapped feature maps and pooled vectors, sparse labels.

    The two sides differ in width and resolution on purpose (adapters and resizes run).
    """
    k = EXAMPLE_CLASSES
    teacher = View(rng.normal(size=(batch, k)).astype("float32") * 2.0, {
        "teacher_map": rng.normal(size=(batch, 4, 4, 6)).astype("float32"),
        "teacher_vec": rng.normal(size=(batch, 6)).astype("float32") + 2.0,
    })
    student = View(rng.normal(size=(batch, k)).astype("float32"), {
        "student_map": rng.normal(size=(batch, 2, 2, 3)).astype("float32"),
        "student_vec": rng.normal(size=(batch, 3)).astype("float32") + 1.0,
    })
    y = (np.arange(batch) % k).astype("int64")
    return teacher, student, y


def _multilabel_inputs(rng, batch):
    """Logits of a 5-label sigmoid classifier and multi-hot labels."""
    k = EXAMPLE_CLASSES
    teacher = View(rng.normal(size=(batch, k)).astype("float32") * 2.0)
    student = View(rng.normal(size=(batch, k)).astype("float32"))
    y = (rng.random(size=(batch, k)) < 0.4).astype("float32")
    return teacher, student, y


EXAMPLE_IGNORE_LABEL = 255


def _dense_inputs(rng, batch):
    """Per-pixel logits of a 5-class segmenter, tapped feature maps, label maps.

    The student predicts at half the teacher's resolution and its features are narrower and
    coarser (resizes and adapters run); about 1 in 5 pixels is labelled
    `EXAMPLE_IGNORE_LABEL` (void), every image keeps valid pixels.
    """
    k = EXAMPLE_CLASSES
    teacher = View(rng.normal(size=(batch, 8, 8, k)).astype("float32") * 2.0, {
        "teacher_map": rng.normal(size=(batch, 4, 4, 6)).astype("float32"),
    })
    student = View(rng.normal(size=(batch, 4, 4, k)).astype("float32"), {
        "student_map": rng.normal(size=(batch, 2, 2, 3)).astype("float32"),
    })
    y = rng.integers(0, k, size=(batch, 8, 8)).astype("int64")
    y[rng.random(size=y.shape) < 0.2] = EXAMPLE_IGNORE_LABEL
    y[:, 0, 0] = 0
    return teacher, student, y


EXAMPLE_IMAGE_SIZE = (64, 64)  # detection examples: tfkd.Anchors(image_size=EXAMPLE_IMAGE_SIZE)


def _detection_inputs(rng, batch):
    """Outputs of a 5-class SSD detector (`ssd_mobile`'s contract) on 64 x 64 images, and labels.

    Anchors: `tfkd.Anchors(image_size=EXAMPLE_IMAGE_SIZE)` (strides 16, 32, 64: 126 anchors).
    Outputs are dicts `class_logits` (batch, 126, 5) and `box_regression` (batch, 126, 4); the
    neck features `p4`, `p5`, `p6` (4x4, 2x2, 1x1) are 6 channels wide on the teacher, 3 on
    the student (adapters run). `y` is what `Anchors.encoder` gives for 1 to 3 random boxes per
    image, stacked: `{"class_logits": one-hot (batch, 126, 5), "box_regression": (batch, 126,
    4)}`. The teacher is confident on the positive anchors, the student is not.
    """
    from tfkd.anchors import Anchors  # tfkd.anchors needs nothing of the knowledge package

    k = EXAMPLE_CLASSES
    anchors = Anchors(image_size=EXAMPLE_IMAGE_SIZE)
    encode = anchors.encoder(k)
    y_cls, y_box = [], []
    for _ in range(batch):
        m = int(rng.integers(1, 4))
        size = rng.uniform(0.25, 0.7, size=(m, 2))
        corner = rng.uniform(0.0, 1.0 - size)
        boxes = np.concatenate([corner, corner + size], -1).astype("float32")
        y, _ = encode(boxes, rng.integers(0, k, size=m).astype("int32"))
        y_cls.append(y["class_logits"].numpy())
        y_box.append(y["box_regression"].numpy())
    y = {"class_logits": np.stack(y_cls), "box_regression": np.stack(y_box)}
    n = len(anchors)
    normal = lambda *shape: rng.normal(size=(batch, *shape)).astype("float32")
    grids = dict(zip(("p4", "p5", "p6"), anchors.grid_sizes))
    teacher = View({"class_logits": 6.0 * y["class_logits"] - 3.0 + normal(n, k),
                    "box_regression": y["box_regression"] + 0.3 * normal(n, 4)},
                   {name: normal(*hw, 6) for name, hw in grids.items()})
    student = View({"class_logits": normal(n, k) - 2.0,
                    "box_regression": y["box_regression"] + normal(n, 4)},
                   {name: normal(*hw, 3) for name, hw in grids.items()})
    return teacher, student, y


def _image_inputs(rng, batch):
    """Outputs of a x2 super-resolution model (8 x 8 x 1 pixels in [0, 255]) and HR labels.

    The teacher's image is the label plus a little noise, the student's a blurrier guess;
    the tapped maps sit at the low resolution (4 x 4), 6 channels wide on the teacher, 3 on
    the student (adapters run).
    """
    y = rng.uniform(0.0, 255.0, size=(batch, 8, 8, 1)).astype("float32")
    teacher = View(y + rng.normal(scale=4.0, size=y.shape).astype("float32"), {
        "teacher_map": rng.normal(size=(batch, 4, 4, 6)).astype("float32"),
    })
    student = View(y + rng.normal(scale=20.0, size=y.shape).astype("float32"), {
        "student_map": rng.normal(size=(batch, 4, 4, 3)).astype("float32"),
    })
    return teacher, student, y


EXAMPLE_INPUTS = {"classifier": _classifier_inputs, "multilabel": _multilabel_inputs,
                  "dense": _dense_inputs, "detection": _detection_inputs,
                  "image": _image_inputs}


# --------------------------------------------------------------------------------------------
# The name registry. Keys are normalised (lower case, no "_" / "-"), so that "dkd",
# "DecoupledKD", "decoupled_kd" and "decoupled-kd" all find DecoupledKD.

_REGISTRY = {}  # canonical name -> class
_KEYS = {}  # normalised name or alias -> canonical name
_SNAKE_CASE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


def _key(name):
    return re.sub(r"[_\-\s]", "", str(name)).lower()


def snake_case(name):
    """"DecoupledKD" -> "decoupled_kd", "FeatureNormalizedKD" -> "feature_normalized_kd"."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def names_of(cls):
    """The names `get` accepts for a registered class: canonical first."""
    names = [cls.default_name, snake_case(cls.__name__), *cls.aliases]
    return list(dict.fromkeys(names))


def _register(cls):
    name = cls.default_name
    if not isinstance(name, str) or not _SNAKE_CASE.match(name):
        raise ValueError(
            f"{cls.__name__}.default_name must be a snake_case name (it is the registry name "
            f"and the metric prefix), got {name!r}; e.g. default_name = "
            f"{snake_case(cls.__name__)!r}."
        )
    same = lambda other: (other.__module__, other.__qualname__) == (cls.__module__, cls.__qualname__)
    for alias in (*names_of(cls), cls.__name__):
        owner = _KEYS.get(_key(alias))
        # The same class defined again (a module reload, a re-run notebook cell) replaces
        # itself; another class under a taken name is an error, not a silent override.
        if owner is not None and owner != name or owner == name and not same(_REGISTRY[name]):
            other = _REGISTRY[owner]
            raise ValueError(
                f"{cls.__name__} ({cls.__module__}) cannot register the name {alias!r}: "
                f"{other.__name__} ({other.__module__}) is registered as {owner!r}. Give "
                f"{cls.__name__} another `default_name` / `aliases`, or define it with "
                "`register=False`."
            )
    _REGISTRY[name] = cls
    for alias in (*names_of(cls), cls.__name__):
        _KEYS[_key(alias)] = name


def registered():
    """{canonical name: class} of every registered term, sorted by name."""
    return {name: _REGISTRY[name] for name in sorted(_REGISTRY)}


def lookup(name):
    """The registered class called `name` (any of its names); a ValueError lists the others."""
    if not isinstance(name, str):
        raise TypeError(f"A knowledge term name is a string, got {name!r}.")
    canonical = _KEYS.get(_key(name))
    if canonical is not None:
        return _REGISTRY[canonical]
    known = sorted(_REGISTRY)
    every = sorted({alias for cls in _REGISTRY.values() for alias in names_of(cls)})
    close = difflib.get_close_matches(name.strip().lower(), every, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"Unknown knowledge term {name!r}.{hint} Registered terms: {', '.join(known)} "
        "(tfkd.knowledge.describe() lists their arguments)."
    )


# --------------------------------------------------------------------------------------------
# Argument checks: every error names the term and the argument.


def check_number(name, value, owner):
    """`value` as a float, or a TypeError naming `owner` and `name` (bools and text refused)."""
    if isinstance(value, (bool, np.bool_, str, bytes)) or value is None:
        raise TypeError(f"{owner}: `{name}` must be a number, got {value!r}.")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"{owner}: `{name}` must be a number, got {value!r} ({type(value).__name__})."
        ) from None


def warmup(weight, steps):
    """A weight that ramps linearly from 0 to `weight` over `steps` optimizer steps, then holds.

    DKD ([Zhao et al. 2022]) warms its loss up over the first 20 epochs: without it the
    term's large early gradients wreck the student (about 7 pt below the student alone on
    CIFAR-10 at 10 epochs). It is Keras' own `PolynomialDecay` from 0 (power 1), so it
    serializes with the term.

    Example:

    >>> import tfkd
    >>> term = tfkd.knowledge.DecoupledKD(weight=tfkd.knowledge.warmup(1.0, steps=100))
    >>> [round(float(term.weight(s)), 2) for s in (0, 50, 100, 500)]
    [0.0, 0.5, 1.0, 1.0]
    """
    weight = check_non_negative("weight", weight, "warmup")
    steps = check_number("steps", steps, "warmup")
    if steps < 1 or steps != int(steps):
        raise ValueError(f"warmup: `steps` must be a whole number >= 1, got {steps}.")
    return keras.optimizers.schedules.PolynomialDecay(
        initial_learning_rate=0.0, decay_steps=int(steps), end_learning_rate=weight, power=1.0)


def check_weight(value, owner, name="weight"):
    """A non-negative number, or a Keras schedule (or its serialized config) of one."""
    if isinstance(value, dict) and "class_name" in value:
        value = keras.saving.deserialize_keras_object(value)
    if isinstance(value, keras.optimizers.schedules.LearningRateSchedule):
        return value
    if callable(value):
        raise TypeError(
            f"{owner}: `{name}` got {type(value).__name__}, a callable that Keras cannot "
            "serialize with the term; pass a number or a "
            "keras.optimizers.schedules.LearningRateSchedule (e.g. tfkd.knowledge.warmup).")
    return check_non_negative(name, value, owner)


def serialize_schedule(value):
    """A number as is; a schedule as its Keras config (for `get_config`)."""
    if isinstance(value, keras.optimizers.schedules.LearningRateSchedule):
        return keras.saving.serialize_keras_object(value)
    return value


def check_non_negative(name, value, owner):
    value = check_number(name, value, owner)
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"{owner}: `{name}` must be a finite number >= 0, got {value}. "
            f"Use 0 to switch the term off."
        )
    return value


def check_positive(name, value, owner):
    value = check_number(name, value, owner)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{owner}: `{name}` must be a finite number > 0, got {value}.")
    return value


def check_count(name, value, owner, minimum=1):
    """An integer >= minimum, given as any number (configs store counts as floats)."""
    value = check_number(name, value, owner)
    if not math.isfinite(value) or value != int(value) or value < minimum:
        raise ValueError(f"{owner}: `{name}` must be an integer >= {minimum}, got {value}.")
    return int(value)


def check_bool(name, value, owner):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{owner}: `{name}` must be True or False, got {value!r}.")
    return bool(value)


def check_interval(name, value, owner, low, high, low_open=False, why=""):
    """A number in [low, high] (or (low, high] with `low_open`)."""
    value = check_number(name, value, owner)
    inside = (low < value if low_open else low <= value) and value <= high
    if not inside:
        bracket = "(" if low_open else "["
        raise ValueError(
            f"{owner}: `{name}` must be in {bracket}{low:g}, {high:g}], got {value}.{why}"
        )
    return value


def as_float32(x):
    return ops.cast(x, "float32")


def labels_to_one_hot(y_true, num_classes, owner):
    """Accepts sparse labels (batch,) / (batch, 1) or one-hot / soft labels (batch, classes).

    A sparse label outside [0, num_classes) would one-hot to a row of zeros, silently read
    as class 0 by an arg-max: it raises instead (an `InvalidArgumentError` naming `owner`,
    the label and the range, eagerly and in a `tf.function`), and its row is NaN, so that
    the loss is NaN where XLA (`jit_compile=True`) drops the assertion and the trainer's
    non-finite guard stops the step.
    """
    if y_true is None:
        raise ValueError(
            f"{owner} needs the ground-truth labels: pass (x, y) to fit/evaluate."
        )
    y = ops.convert_to_tensor(y_true)
    if len(y.shape) >= 2 and y.shape[-1] == num_classes and num_classes > 1:
        return ops.cast(y, "float32")
    y = ops.reshape(ops.cast(y, "int32"), (-1,))
    valid = tf.logical_and(y >= 0, y < num_classes)
    explain = (f"is outside the valid range [0, {num_classes}) of the {num_classes}-class "
               f"logits. Labels must be class indices 0..{num_classes - 1}: check the label "
               "encoding (1-based labels?) or the number of classes of the model.")
    if tf.executing_eagerly():
        bad = y.numpy()[~valid.numpy()]
        if bad.size:
            raise tf.errors.InvalidArgumentError(None, None, f"{owner}: label {bad[0]} {explain}")
    else:
        first_bad = tf.gather(y, tf.argmin(tf.cast(valid, "int32")))
        check = tf.debugging.Assert(tf.reduce_all(valid), [f"{owner}: label", first_bad, explain])
        with tf.control_dependencies([check]):
            y = tf.identity(y)
    poison = tf.where(valid, 0.0, float("nan"))[:, None]
    return ops.one_hot(y, num_classes, dtype="float32") + poison


def labels_to_classes_one_hot(y_true, num_classes, owner):
    """One-hot of each sample's class: soft labels are reduced to their arg-max class.

    NaN rows of `labels_to_one_hot` (labels out of range) stay NaN: an arg-max would turn
    them back into a valid class.
    """
    y = labels_to_one_hot(y_true, num_classes, owner)
    keep_nan = 0.0 * ops.sum(y, axis=-1, keepdims=True)
    return ops.one_hot(ops.argmax(y, axis=-1), num_classes, dtype="float32") + keep_nan
