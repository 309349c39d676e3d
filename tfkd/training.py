"""The one training step that `tfkd.Distiller` and every scheme of `tfkd.schemes` share.

A `Trainer` is a `keras.Model` that trains one or more networks (the *learners*) against
teaching signals. A subclass says only what it runs and what it compares:

- `teach(x, y)`: the teaching side (teachers, frozen peers), run once per step outside the
  gradient tape, its tensors stopped (a cached batch from `tfkd.data.cache_teacher` replaces
  it);
- `learn(x, y, sample_weight, teaching, training)`: the learners' forward pass, returning a
  `Step`: a dict of named losses (each with its weight and the optimizer it trains), the
  predictions the compiled metrics see, and optional statistics to log;
- `optimizer_groups()`: which modules (or variables) each optimizer updates.

The base does the rest once: the replica scaling (a per-replica loss is divided by
`num_replicas_in_sync` before the gradient, as `keras.losses.Loss` does), the regularisation
losses of each group, one tracker per loss name (lower is better, so `ModelCheckpoint` and
`EarlyStopping` know the direction of `val_<name>`), one `compile` path for any number of
optimizers, `get_compile_config` / `compile_from_config`, and the non-finite guard.

The guard: a step whose losses or gradients are not finite changes nothing. The update of
every optimizer runs inside a conditional on an all-replica finite flag (the pattern of
Keras' `LossScaleOptimizer`, which XLA keeps, unlike `tf.debugging.Assert`), and the state
that the forward pass itself changes (BatchNorm moving statistics, quantization ranges) is
restored from a copy taken before the step. The first failure is recorded in two variables;
`fit` / `evaluate` / `train_on_batch` read them from the host after each batch and raise
`FloatingPointError` naming the loss (or the variable whose gradient is not finite) and the
optimizer step. Once a step failed, later steps of the same `steps_per_execution` block are
skipped too, so the model keeps the weights of the last good step. Under a
`LossScaleOptimizer` (mixed precision) non-finite gradients are its own business (it skips
the step and lowers the scale); losses are still checked.
"""
import contextlib

import keras
import tensorflow as tf
from keras import ops

from tfkd import _compat
from tfkd import cached as cached_batches
from tfkd.knowledge.base import View

MAIN = "optimizer"


class Step:
    """What one forward pass of a trainer produced.

    Args:
        losses: dict name -> a scalar tensor (weight 1, trains the main optimizer) or a
            `weighted(value, weight, optimizer)`. Names are the metric names (`student_loss`,
            `hint_loss`, ...) and must be declared with `Trainer.declare`.
        predictions: what the compiled metrics compare with the labels (None: no metrics).
        stats: dict name -> scalar tensor, logged (declared) but not trained on.
    """

    __slots__ = ("losses", "predictions", "stats")

    def __init__(self, losses, predictions=None, stats=None):
        self.losses = dict(losses)
        self.predictions = predictions
        self.stats = dict(stats or {})


class weighted:  # noqa: N801 - reads as a function at the call site: weighted(value, 0.5)
    """A loss value with its weight and the optimizer (attribute name) it trains."""

    __slots__ = ("value", "weight", "optimizer")

    def __init__(self, value, weight=1.0, optimizer=MAIN):
        self.value = value
        self.weight = weight
        self.optimizer = optimizer


def replicas():
    return tf.distribute.get_strategy().num_replicas_in_sync


def stop_gradient(obj):
    """The teaching side carries no gradient: Views, lists of Views, or nested tensors."""
    if obj is None:
        return None
    if isinstance(obj, View):
        return View(keras.tree.map_structure(tf.stop_gradient, obj.outputs),
                    {k: tf.stop_gradient(v) for k, v in obj.features.items()})
    if isinstance(obj, (list, tuple)) and any(isinstance(o, View) for o in obj):
        return type(obj)(stop_gradient(o) for o in obj)
    return keras.tree.map_structure(tf.stop_gradient, obj)


def unique_variables(variables):
    """Variables in order, each once (tap models and sub-models share them)."""
    seen, out = set(), []
    for v in variables:
        if id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


def batch_size_of(x):
    return ops.shape(next(t for t in keras.tree.flatten(x) if t is not None))[0]


def reduce_batch(value, sample_weight=None):
    """Per-sample loss (batch,) -> scalar, the way `Knowledge.loss` reduces (sum(l*w)/batch)."""
    value = ops.cast(value, "float32")
    if len(value.shape) == 0:
        return value
    if sample_weight is not None:
        value = value * ops.cast(ops.reshape(sample_weight, (-1,)), "float32")
    return ops.sum(value) / ops.cast(ops.shape(value)[0], "float32")


def check_model(obj, what, owner):
    if not isinstance(obj, keras.Model):
        raise TypeError(
            f"{owner}: `{what}` must be a keras.Model, got {type(obj).__name__}. Wrap layers "
            "in keras.Model(inputs, outputs) or keras.Sequential first."
        )
    return obj


def logits_width(view, what, owner):
    """Number of classes of a symbolic View's (single) logits output."""
    out = view.output()
    if len(out.shape) != 2:
        raise ValueError(
            f"{owner}: the {what} must output logits of shape (batch, classes); got shape "
            f"{tuple(out.shape)}."
        )
    return out.shape[-1]


def check_pair(owner, student, teacher, teacher_optional=False):
    """Both are Keras models (the teacher may be None where terms need none), and distinct."""
    check_model(student, "student", owner)
    if teacher is None and teacher_optional:
        return
    check_model(teacher, "teacher", owner)
    if teacher is student:
        raise ValueError(f"{owner}: `teacher` and `student` are the same model; pass two models.")


def check_callable(obj, what, owner):
    if obj is not None and not callable(obj):
        raise TypeError(
            f"{owner}: `{what}` must be a callable applied to the batch (e.g. "
            f"keras.layers.Resizing(h, w)) or None; got {type(obj).__name__} {obj!r}."
        )
    return obj


def input_shapes(model, side):
    """Per-sample input shapes of a model, one tuple per input (multi-input models too)."""
    from tfkd.taps import model_input_spec

    return tuple(tuple(t.shape[1:]) for t in keras.tree.flatten(model_input_spec(model, side)))


def check_same_inputs(owner, models, fix):
    """Raises unless every model takes inputs of the same shapes (None matches any size).

    `models` is a list of (description, model).
    """
    shapes = [(what, input_shapes(m, what)) for what, m in models]

    def compatible(a, b):
        return len(a) == len(b) and all(
            len(s) == len(t) and all(i is None or j is None or i == j for i, j in zip(s, t))
            for s, t in zip(a, b))

    first_what, first = shapes[0]
    for what, shape in shapes[1:]:
        if not compatible(first, shape):
            raise ValueError(
                f"{owner}: the {first_what} takes inputs of shape {list(first)} and the "
                f"{what} {list(shape)}, and no input adapter was given. {fix}"
            )


class Trainer(keras.Model):
    """Base of every tfkd trainer; see the module docstring for what subclasses provide.

    Class attributes a subclass may set:
        extra_optimizers: {attribute name: role}, e.g. {"discriminator_optimizer": "the
            discriminator"}; `compile` then needs each (by name or as a list).
        main_optimizer_role: what `optimizer` trains, for error messages.
        group_totals: {optimizer attribute: tracked name of its total loss}; the main
            optimizer's total is `loss`.
        compiled_task_loss: True to run the task loss through Keras' compiled loss (which
            handles dict / list outputs and loss_weights); False to apply the one loss given
            to `compile` to each output the subclass passes to `task_loss`.

    Example: a trainer that fits a student to its labels and to a teacher's soft targets.

    ```python
    import keras, numpy as np, tfkd
    from tfkd.training import Step, Trainer, weighted

    class SoftLabels(Trainer):
        def __init__(self, student, teacher, **kwargs):
            super().__init__(**kwargs)
            self.student, self.teacher = student, teacher
            self.freeze(teacher)
            self.kd = tfkd.knowledge.SoftTargets(temperature=2.0)
            self.declare(["student_loss", "kd_loss"])

        def call(self, x, training=False):
            return self.student(x, training=training)

        def optimizer_groups(self):
            return {"optimizer": [self.student]}

        def requires_task_loss(self):
            return True

        def teach(self, x, y):                       # outside the tape, no gradient
            return tfkd.knowledge.View(self.teacher(x, training=False))

        def learn(self, x, y, sample_weight, teaching, training):
            z = self.student(x, training=training)
            return Step({"student_loss": self.task_loss(y, z, sample_weight),
                         "kd_loss": weighted(self.kd.loss(teaching, tfkd.knowledge.View(z)),
                                             0.5)}, predictions=z)

    net = lambda: keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    trainer = SoftLabels(net(), net())
    trainer.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = trainer.fit(np.random.rand(32, 4), np.random.randint(0, 3, 32), verbose=0)
    sorted(history.history)   # ['kd_loss', 'loss', 'student_loss']
    ```
    """

    extra_optimizers = {}
    main_optimizer_role = "the student"
    group_totals = {}
    compiled_task_loss = False

    def __init__(self, check_numerics=True, **kwargs):
        super().__init__(**kwargs)
        self.check_numerics = bool(check_numerics)
        self._declared = _Holder()
        self._declared.losses, self._declared.stats = [], []
        self._guard = None
        self._task_loss_fn = None
        self._compile_args = None

    # -- what subclasses declare -----------------------------------------------------------
    def declare(self, losses, stats=()):
        """Creates a tracker per loss name (in reporting order) and per statistic name."""
        totals = ["loss"] + [n for n in self.group_totals.values()]
        names = list(dict.fromkeys(totals + list(losses)))
        self._loss_trackers = _compat.metrics_group(
            [keras.metrics.Mean(name=n) for n in names], "trainer_losses", direction="down")
        self._stat_trackers = _compat.metrics_group(
            [keras.metrics.Mean(name=n) for n in stats], "trainer_stats", direction=None)
        self._declared.losses, self._declared.stats = names, list(stats)

    def teach(self, x, y):
        """The teaching side of a batch (outside the tape). Default: none."""
        return None

    def teach_from_cache(self, view):
        raise TypeError(
            f"{type(self).__name__} does not take cached teacher batches "
            "(tfkd.data.cache_teacher); feed the raw batches.")

    def learn(self, x, y, sample_weight, teaching, training):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement `learn`.")

    def optimizer_groups(self):
        """{optimizer attribute: modules or variables it trains}. Default: everything."""
        return {MAIN: [self]}

    def describe_loss(self, name):
        """How an error message names a loss."""
        return f"loss {name!r}"

    def requires_task_loss(self):
        return False

    # -- construction helpers --------------------------------------------------------------
    def set_numbers(self, owner, positive=(), **values):
        """Validates numeric constructor arguments (finite, >= 0; > 0 for `positive` names),
        with errors naming the class and the argument, and stores them as attributes."""
        from tfkd.knowledge.base import check_non_negative, check_positive

        for key, value in values.items():
            check = check_positive if key in positive else check_non_negative
            setattr(self, key, check(key, value, owner))

    def freeze(self, *models):
        """Teachers are frozen: no gradients, BatchNorm statistics untouched."""
        for model in models:
            model.trainable = False

    def knowledge_terms(self, knowledge, default=None, inherit_from=None):
        """The knowledge terms of this trainer: `tfkd.knowledge` terms, specs or Keras'
        distillation losses, each claimed by this trainer, with unique names."""
        from tfkd.knowledge import Knowledge, get_list

        if knowledge is None:
            knowledge = default() if default is not None else []
        if isinstance(knowledge, Knowledge) or not isinstance(knowledge, (list, tuple, str)):
            knowledge = [knowledge]
        terms = get_list(knowledge)  # terms, specs ("dkd:beta=8,soft_targets"), Keras losses
        claim_terms(self, terms, inherit_from=inherit_from)
        unique_names(terms)
        return terms

    def student_losses(self, y, y_pred, sample_weight, name="student_loss"):
        """{name: the task loss of one output, weighted by `student_loss_weight`}, or {} when
        that weight is 0 (then no labels are needed)."""
        if not self.student_loss_weight > 0:
            return {}
        if y is None:
            raise ValueError(
                f"{type(self).__name__}: the batch has no labels but student_loss_weight > 0. "
                "Feed (x, y) batches, or set student_loss_weight=0 to train on knowledge alone.")
        return {name: weighted(self.task_loss(y, y_pred, sample_weight),
                               self.student_loss_weight)}

    # -- serialization ---------------------------------------------------------------------
    # Constructor arguments kept as attributes of the same name; `teacher_keys` among them
    # are serialized without their user's compile state.
    config_keys = ()
    teacher_keys = ()

    def get_config(self):
        config = {"name": self.name, "check_numerics": self.check_numerics}
        for key in self.config_keys:
            value = getattr(self, key)
            config[key] = (_serialize_tree(value, serialize_teacher) if key in self.teacher_keys
                           else _serialize_tree(value, serialize))
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = {k: _deserialize_tree(v, custom_objects) for k, v in config.items()}
        return cls(**config)

    # -- the task loss -------------------------------------------------------------------
    def task_loss(self, y, y_pred, sample_weight=None):
        """The loss given to `compile` on one output, per replica, not replica-scaled."""
        if self.compiled_task_loss:
            value = _compat.compiled_loss(self, y, y_pred, sample_weight)
        elif self._task_loss_fn is not None:
            value = self._task_loss_fn(y, y_pred, sample_weight)
        else:
            raise ValueError(f"{type(self).__name__}: no task loss was given to compile().")
        # keras.losses.Loss divides by the replicas itself; undo it, the base scales once.
        return ops.cast(value, "float32") * replicas()

    # -- the step ------------------------------------------------------------------------
    def _teaching(self, x, y):
        x, cached_view = cached_batches.split(x)
        if cached_view is not None:
            return x, self.teach_from_cache(cached_view)
        return x, stop_gradient(self.teach(x, y))

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, teaching = self._teaching(x, y)
        groups = self._groups()
        guard = self.check_numerics and self._guard is not None
        if guard:
            saved = [tf.identity(v) for v in self._forward_state()]
        with tf.GradientTape(persistent=len(groups) > 1) as tape:
            step = self.learn(x, y, sample_weight, teaching, training=True)
            losses = self._collect(step)
            totals = self._totals(losses, groups)
            scaled = {key: getattr(self, key).scale_loss(totals[key] / replicas())
                      for key in groups}
        grads = {key: tape.gradient(scaled[key], groups[key][0]) for key in groups}
        del tape
        if guard:
            code = self._guard.failure_code(losses, totals, grads, groups, self)
            ok = code < 0
            self._apply_if(ok, grads, groups)
            for v, old in zip(self._forward_state(), saved):
                v.assign(tf.where(ok, v, old))
            self._guard.record(code, self.optimizer.iterations)
        else:
            self._apply_all(grads, groups)
        return self._logs(x, y, sample_weight, step, losses, totals)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, teaching = self._teaching(x, y)
        step = self.learn(x, y, sample_weight, teaching, training=False)
        losses = self._collect(step)
        totals = self._totals(losses, self._groups(), with_regularization=False)
        if self.check_numerics and self._guard is not None:
            code = self._guard.failure_code(losses, totals, None, None, self)
            self._guard.record(code, tf.constant(-1, tf.int64))  # -1: an evaluation batch
        return self._logs(x, y, sample_weight, step, losses, totals)

    def _collect(self, step):
        if not isinstance(step, Step):
            raise TypeError(f"{type(self).__name__}.learn must return a tfkd.training.Step, "
                            f"got {type(step).__name__}.")
        out = {}
        for name, item in step.losses.items():
            if name not in self._declared.losses:
                raise KeyError(f"{type(self).__name__}.learn returned the loss {name!r}, "
                               f"which was not declared; declared: {self._declared.losses}.")
            if not isinstance(item, weighted):
                item = weighted(item)
            out[name] = weighted(ops.cast(item.value, "float32"), item.weight, item.optimizer)
        return out

    def _totals(self, losses, groups, with_regularization=True):
        """Unscaled total loss of each optimizer group (regularisation included)."""
        totals = {}
        for key in groups or {MAIN: None}:
            total = ops.zeros((), "float32")
            for item in losses.values():
                if item.optimizer == key and not _is_zero(item.weight):
                    total = total + item.weight * item.value
            if with_regularization and groups:
                reg = [ops.cast(l, "float32") for m in groups[key][1] for l in m.losses]
                if reg:
                    total = total + ops.sum(ops.stack(reg))
            totals[key] = total
        return totals

    def _apply_all(self, grads, groups):
        for key, (variables, _) in groups.items():
            getattr(self, key).apply_gradients(zip(grads[key], variables))

    def _apply_if(self, ok, grads, groups):
        """Applies every group's gradients only where `ok` (the same on every replica)."""
        def apply():
            self._apply_all(grads, groups)

        strategy = tf.distribute.get_strategy()
        if _compat.supports_no_merge_call() or not tf.distribute.has_strategy():
            tf.cond(ok, apply, lambda: None)
            return

        # Under MirroredStrategy the optimizers' apply calls `merge_call`, which may not run
        # inside a `cond` in replica context: take the decision in cross-replica context and
        # re-enter the replicas to apply (what keras' LossScaleOptimizer does).
        def cross_replica(distribution, ok, grads):
            ok = distribution.experimental_local_results(ok)[0]

            def apply_fn():
                distribution.extended.call_for_each_replica(
                    lambda g: self._apply_all(g, groups), args=(grads,))

            tf.cond(ok, apply_fn, lambda: None)

        del strategy
        tf.distribute.get_replica_context().merge_call(cross_replica, args=(ok, grads))

    def _logs(self, x, y, sample_weight, step, losses, totals):
        batch = batch_size_of(x)
        updated = set()
        values = {name: item.value for name, item in losses.items()}
        values["loss"] = totals[MAIN]
        for key, name in self.group_totals.items():
            if key in totals and name not in losses:
                values[name] = totals[key]
        for tracker in self._loss_trackers.metrics:
            if tracker.name in values:
                tracker.update_state(values[tracker.name], sample_weight=batch)
                updated.add(tracker.name)
        for tracker in self._stat_trackers.metrics:
            if tracker.name in step.stats:
                tracker.update_state(ops.cast(step.stats[tracker.name], "float32"),
                                     sample_weight=batch)
                updated.add(tracker.name)
        if step.predictions is not None and y is not None:
            logs = self.compute_metrics(x, y, step.predictions, sample_weight=sample_weight)
        else:
            logs = self.get_metrics_result()
        # A tracker not updated by this kind of step (a generator loss in `evaluate`) is not
        # reported as a meaningless 0.
        skipped = set(self._declared.losses + self._declared.stats) - updated
        return {k: v for k, v in logs.items() if k not in skipped}

    # -- groups and state ----------------------------------------------------------------
    def _groups(self):
        """{optimizer attribute: (trainable variables, modules)} of every group."""
        out, taken = {}, set()
        extra = [k for k in self.optimizer_groups() if k != MAIN]
        # Extra groups first, so that the main group ("everything else") excludes them.
        spec = self.optimizer_groups()
        for key in extra + [MAIN]:
            items = spec.get(key, [])
            modules = [m for m in items if hasattr(m, "trainable_variables")]
            variables = []
            for item in items:
                variables += list(item.trainable_variables) if hasattr(
                    item, "trainable_variables") else [item]
            variables = [v for v in unique_variables(variables) if id(v) not in taken]
            taken |= {id(v) for v in variables}
            out[key] = (variables, modules)
        return out

    def _forward_state(self):
        """Variables a training-mode forward pass changes: the non-trainable weights of the
        learners' trainable layers (BatchNorm statistics, quantization ranges)."""
        if getattr(self._declared, "state", None) is None:
            from tfkd.taps import _walk

            frozen = set()
            modules = [m for _, (_, ms) in self._groups().items() for m in ms]
            for module in modules:
                if isinstance(module, keras.Model):
                    for _, layer in _walk(module):
                        if not layer.trainable:
                            frozen |= {id(v) for v in layer.weights}
                elif isinstance(module, keras.layers.Layer) and not module.trainable:
                    frozen |= {id(v) for v in module.weights}
            teaching = {id(v) for m in self._teaching_modules() for v in m.weights}
            state = [v for m in modules for v in m.non_trainable_variables
                     if id(v) not in frozen and id(v) not in teaching]
            self._declared.state = unique_variables(state)
        return self._declared.state

    def _teaching_modules(self):
        """Frozen models of the teaching side (their weights are never saved or restored)."""
        return []

    # -- compile ---------------------------------------------------------------------------
    def compile(self, optimizer="adam", loss=None, metrics=None, **kwargs):
        owner = type(self).__name__
        extras = {key: kwargs.pop(key, None) for key in self.extra_optimizers}
        if isinstance(optimizer, (list, tuple)):
            wanted = 1 + len(self.extra_optimizers)
            if len(optimizer) != wanted:
                raise ValueError(
                    f"{owner} trains {wanted} network(s) and needs {wanted} optimizer(s) "
                    f"({self._roles()}); got a list of {len(optimizer)}.")
            optimizer, *rest = optimizer
            for key, opt in zip(self.extra_optimizers, rest):
                if extras[key] is not None:
                    raise ValueError(f"{owner}: `{key}` was given twice (in the list and by name).")
                extras[key] = opt
        missing = [k for k, v in extras.items() if v is None]
        if missing:
            n = {2: "two", 3: "three"}.get(1 + len(self.extra_optimizers))
            raise ValueError(
                f"{owner} trains {n} networks and needs {n} optimizers ({self._roles()}), but "
                f"compile() got only `optimizer`. Pass e.g. compile(optimizer=keras.optimizers."
                f"Adam(1e-3), {missing[0]}=keras.optimizers.Adam(1e-3), ...), or "
                f"optimizer=[student_optimizer, {', '.join(missing)}].")
        if loss is None and self.requires_task_loss():
            raise ValueError(self._missing_loss_message())
        optimizer = keras.optimizers.get(optimizer)
        extras = {k: keras.optimizers.get(v) for k, v in extras.items()}
        for key, opt in extras.items():
            if opt is optimizer:
                raise ValueError(
                    f"{owner}: `optimizer` and `{key}` are the same optimizer object; each "
                    "network needs its own (its slots and step count are per optimizer). Pass "
                    "two instances, e.g. keras.optimizers.Adam(1e-3) twice.")
        self._compile_args = {"optimizer": optimizer, "loss": loss, "metrics": metrics, **extras}
        self._compile_kwargs = dict(kwargs)
        self._task_loss_fn = None if self.compiled_task_loss else _as_loss(loss)
        for key, opt in extras.items():
            setattr(self, key, opt)
        super().compile(optimizer=optimizer, loss=loss if self.compiled_task_loss else None,
                        metrics=self._keras_metrics(metrics), **kwargs)
        # Keras builds `optimizer` before the first step; the others, and the guard's state,
        # are created here in the model's strategy scope (not inside a replica's step).
        with self.distribute_strategy.scope():
            groups = self._groups()
            for key in self.extra_optimizers:
                getattr(self, key).build(groups[key][0])
            self._guard = _Guard(self._guard_names(groups))

    def _missing_loss_message(self):
        return (f"{type(self).__name__}.compile() needs the task `loss`, e.g. loss=keras.losses."
                "SparseCategoricalCrossentropy(from_logits=True).")

    def _roles(self):
        roles = [f"`optimizer` for {self.main_optimizer_role}"]
        roles += [f"`{k}` for {role}" for k, role in self.extra_optimizers.items()]
        return ", ".join(roles)

    def _keras_metrics(self, metrics):
        keys = self.metric_keys()
        if keys is None or metrics is None or isinstance(metrics, dict):
            return metrics
        if not isinstance(metrics, (list, tuple)):
            metrics = [metrics]
        return {key: [_clone(m) for m in metrics] for key in keys}

    def get_compile_config(self):
        if self._compile_args is None:
            return None
        ser = keras.saving.serialize_keras_object
        config = {k: ser(v) for k, v in self._compile_args.items() if v is not None}
        config.update({k: v for k, v in self._compile_kwargs.items()
                       if isinstance(v, (bool, int, float, str))})
        return config

    def compile_from_config(self, config):
        self.compile(**{k: deserialize(v) for k, v in config.items()})
        # Build every optimizer now, so that its saved state loads into it.
        groups = self._groups()
        if not self.optimizer.built:
            self.optimizer.build(groups[MAIN][0])

    # -- metrics ---------------------------------------------------------------------------
    def metric_keys(self):
        """Names of the outputs that each get the compiled metrics (None: one output)."""
        return None

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        keys = self.metric_keys()
        if keys is not None:
            # Keras also calls this with `call()`'s output alone (its symbolic build under a
            # distribution strategy): give every key a prediction so the metric names agree.
            given = y_pred if isinstance(y_pred, dict) else {}
            first = y_pred if not isinstance(y_pred, dict) else next(iter(y_pred.values()))
            y_pred = {k: given.get(k, first) for k in keys}
            if not isinstance(y, dict):
                y = {k: y for k in keys}
        return super().compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    @property
    def metrics(self):
        tracked = []
        if getattr(self, "_loss_trackers", None) is not None:
            tracked += [self._loss_trackers, self._stat_trackers]
        compiled = _compat.compiled_metrics(self)
        # Compiled metrics are built by their first update (DataFree only updates them when
        # evaluating), and Keras reads every metric's result at the end of `fit`.
        if compiled is not None and compiled.built:
            tracked.append(compiled)
        return tracked

    # -- the guard, host side --------------------------------------------------------------
    def _checked_losses(self):
        """Loss names in the order the guard checks them: each part before the totals, so
        that the error names the culprit rather than the sum."""
        totals = ["loss"] + list(self.group_totals.values())
        parts = [n for n in self._declared.losses if n not in totals]
        return parts + [n for n in self._declared.losses if n in totals]

    def _guard_names(self, groups):
        names = [self.describe_loss(n) for n in self._checked_losses()]
        for key, (variables, _) in groups.items():
            names += [f"gradient of {_variable_name(v)}" for v in variables]
        return names

    def raise_if_nonfinite(self):
        """Raises FloatingPointError if a step since the last `fit`/`evaluate` was not finite."""
        if self._guard is not None:
            self._guard.raise_if_failed(type(self).__name__)

    def _run_guarded(self, method, args, kwargs, callbacks_key="callbacks"):
        if self._guard is not None:
            self._guard.reset()
        if callbacks_key and self.check_numerics:
            callbacks = kwargs.get(callbacks_key)
            guard_cb = _GuardCallback()
            if callbacks is None:
                kwargs[callbacks_key] = [guard_cb]
            elif isinstance(callbacks, keras.callbacks.CallbackList):
                guard_cb.set_model(self)
                callbacks.callbacks.append(guard_cb)
            else:
                kwargs[callbacks_key] = list(callbacks) + [guard_cb]
        result = method(*args, **kwargs)
        self.raise_if_nonfinite()
        return result

    def _refuse_multi_worker(self, method, alternative):
        strategies = (tf.distribute.get_strategy(), self.distribute_strategy)
        if any(isinstance(s, tf.distribute.MultiWorkerMirroredStrategy) for s in strategies):
            raise RuntimeError(
                f"Keras 3's `{method}` cannot run under MultiWorkerMirroredStrategy "
                f"(keras-team/keras#20585). Use `{alternative}(model, dataset, ...)`, which "
                "drives `strategy.run(model.train_step / test_step)` itself.")

    def fit(self, *args, **kwargs):
        self._refuse_multi_worker("fit", "tfkd.distribute.fit_multi_worker")
        return self._run_guarded(super().fit, args, kwargs)

    def evaluate(self, *args, **kwargs):
        self._refuse_multi_worker("evaluate", "tfkd.distribute.evaluate_multi_worker")
        return self._run_guarded(super().evaluate, args, kwargs)

    def train_on_batch(self, *args, **kwargs):
        return self._run_guarded(super().train_on_batch, args, kwargs, callbacks_key=None)

    def test_on_batch(self, *args, **kwargs):
        return self._run_guarded(super().test_on_batch, args, kwargs, callbacks_key=None)

    # -- saving --------------------------------------------------------------------------
    def save(self, *args, **kwargs):
        with self._teachers_detached():
            return super().save(*args, **kwargs)

    def save_weights(self, *args, **kwargs):
        with self._teachers_detached():
            return super().save_weights(*args, **kwargs)

    def load_weights(self, *args, **kwargs):
        with self._teachers_detached():  # files written by save/save_weights hold none
            return super().load_weights(*args, **kwargs)

    @contextlib.contextmanager
    def _teachers_detached(self):
        """A teacher compiled by its user carries its own optimizer, which Keras' saving
        would write into the trainer's file (16 extra variables for a tiny Adam-trained
        convnet): the file holds what the trainer needs. The teacher gets it back after."""
        held = []
        for model in self._teaching_modules():
            optimizer = getattr(model, "optimizer", None)
            if isinstance(model, keras.Model) and optimizer is not None:
                held.append((model, optimizer))
                model.optimizer = None
        try:
            yield
        finally:
            for model, optimizer in held:
                model.optimizer = optimizer

    def build(self, input_shape=None):
        # Subclasses build everything in __init__ (taps, adapters); Keras' loader calls this.
        self.built = True


class _Guard:
    """Device-side record of the first non-finite step: which name failed, at which step."""

    def __init__(self, names):
        self.names = list(names)
        agg = tf.VariableAggregation.ONLY_FIRST_REPLICA
        # Plain tf.Variables, outside Keras' tracking: not weights, never saved.
        self.code = tf.Variable(-1, dtype=tf.int32, trainable=False, aggregation=agg,
                                name="tfkd_nonfinite_code")
        self.step = tf.Variable(-1, dtype=tf.int64, trainable=False, aggregation=agg,
                                name="tfkd_nonfinite_step")

    def failure_code(self, losses, totals, grads, groups, trainer):
        """Index (into `names`) of the first non-finite loss or gradient, or -1; the same on
        every replica, and not -1 once an earlier step of this run failed."""
        declared = trainer._checked_losses()
        values = {name: item.value for name, item in losses.items()}
        values["loss"] = totals[MAIN]
        for key, name in trainer.group_totals.items():
            if key in totals and name not in values:
                values[name] = totals[key]
        flags = []
        for name in declared:
            value = values.get(name)
            flags.append(tf.constant(False) if value is None
                         else tf.logical_not(tf.reduce_all(tf.math.is_finite(value))))
        if grads is not None:
            for key, (variables, _) in groups.items():
                check = not isinstance(getattr(trainer, key), keras.optimizers.LossScaleOptimizer)
                for g in grads[key]:
                    if g is None or not check:
                        flags.append(tf.constant(False))
                        continue
                    if isinstance(g, tf.IndexedSlices):
                        g = g.values
                    flags.append(tf.logical_not(tf.reduce_all(tf.math.is_finite(g))))
        if not flags:
            return tf.where(self.code >= 0, self.code, -1)
        bad = tf.cast(tf.stack(flags), tf.float32)
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, bad)
        bad = bad > 0
        first = tf.cast(tf.argmax(tf.cast(bad, tf.int32)), tf.int32)
        code = tf.where(tf.reduce_any(bad), first, -1)
        previous = self.code.read_value()
        return tf.where(previous >= 0, previous, code)

    def record(self, code, step):
        fresh = tf.logical_and(code >= 0, self.code < 0)
        self.step.assign(tf.where(fresh, tf.cast(step, tf.int64), self.step))
        self.code.assign(tf.where(code >= 0, code, self.code))

    def reset(self):
        self.code.assign(-1)
        self.step.assign(-1)

    def raise_if_failed(self, owner):
        code = int(self.code.numpy())
        if code < 0:
            return
        what = self.names[code] if code < len(self.names) else "total loss"
        step = int(self.step.numpy())
        self.reset()
        if step < 0:
            raise FloatingPointError(
                f"{owner}: the {what} was NaN/Inf on an evaluation batch (no weight changes in "
                "evaluation). Check the evaluation data for NaN/Inf, or that the teacher's "
                "outputs on it are finite (teacher.predict on a batch). check_numerics=False "
                "turns this check off.") from None
        if what.startswith("gradient of"):
            message = (f"A step with finite losses produced a {what} (non-finite) at "
                       f"optimizer step {step}")
        else:
            message = f"The {what} produced a NaN/Inf loss at optimizer step {step}"
        raise FloatingPointError(
            f"{owner}: {message}; training stopped and that step was not applied: the weights, "
            "optimizer state and BatchNorm statistics are those of the last good step. Lower "
            "the learning rate or this term's weight, check the inputs for NaN/Inf, or check "
            "that the teacher's outputs are finite (teacher.predict on a batch). "
            "check_numerics=False turns this guard off.") from None


class _GuardCallback(keras.callbacks.Callback):
    """Reads the guard from the host after each batch (the step itself cannot raise: XLA
    drops assertions)."""

    def on_train_batch_end(self, batch, logs=None):
        self.model.raise_if_nonfinite()

    def on_test_batch_end(self, batch, logs=None):
        self.model.raise_if_nonfinite()


class Holder:
    """Plain attributes out of Keras' tracking (tap models share every weight with the
    models they tap, and must not be saved twice)."""


_Holder = Holder


def unique_names(terms):
    """Renames repeated term names `hint`, `hint_2`, ...: metric names must be unique."""
    seen = {}
    for term in terms:
        count = seen.get(term.name, 0)
        seen[term.name] = count + 1
        if count:
            term.name = f"{term.name}_{count + 1}"
            seen[term.name] = 1


def claim_terms(owner, terms, inherit_from=None):
    """Each knowledge term belongs to one trainer: its adapters were built for that
    trainer's student (`Knowledge.claim` raises when a term is reused elsewhere)."""
    for term in terms:
        claim = getattr(term, "claim", None)
        if claim is not None:
            claim(owner, inherit_from=inherit_from)


def term_losses(terms, teacher_view, student_view, y=None, sample_weight=None, suffix="_loss",
                optimizer=MAIN, training=None):
    """{`<term.name>_loss`: weighted(term loss, term.weight)} for knowledge terms.

    `training=False` (evaluation) tells stateful terms to leave their state alone."""
    out = {}
    for term in terms:
        teacher = teacher_view if term.requires_teacher else None
        value = term.loss(teacher, student_view, y_true=y, sample_weight=sample_weight,
                          training=training)
        out[f"{term.name}{suffix}"] = weighted(value, term.current_weight(), optimizer)
    return out


def _is_zero(weight):
    return isinstance(weight, (int, float)) and weight == 0


def _variable_name(v):
    return getattr(v, "path", None) or getattr(v, "name", "?")


def _as_loss(loss):
    """Any Keras loss spec as a `keras.losses.Loss` (which scales itself for the replicas)."""
    if loss is None:
        return None
    fn = keras.losses.get(loss)
    if isinstance(fn, keras.losses.Loss):
        return fn
    return keras.losses.LossFunctionWrapper(fn)


def _clone(obj):
    """A fresh copy of a serializable Keras object (optimizer, metric, loss, knowledge term)."""
    if obj is None or isinstance(obj, str):
        return obj
    return keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))


def clone(obj):
    return _clone(obj)


def deserialize(value, custom_objects=None):
    """A serialized Keras object (or a list of them) back; other values as they are."""
    if isinstance(value, dict):
        return keras.saving.deserialize_keras_object(value, custom_objects=custom_objects)
    if isinstance(value, (list, tuple)):
        return [deserialize(v, custom_objects) for v in value]
    return value


def serialize(obj):
    return None if obj is None else keras.saving.serialize_keras_object(obj)


def _serialize_tree(value, fn):
    if isinstance(value, (list, tuple)):
        return [_serialize_tree(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: _serialize_tree(v, fn) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return fn(value)


def _is_serialized(value):
    return isinstance(value, dict) and "class_name" in value and "config" in value


def _deserialize_tree(value, custom_objects=None):
    if _is_serialized(value):
        return keras.saving.deserialize_keras_object(value, custom_objects=custom_objects)
    if isinstance(value, list):
        return [_deserialize_tree(v, custom_objects) for v in value]
    if isinstance(value, dict):
        return {k: _deserialize_tree(v, custom_objects) for k, v in value.items()}
    return value


def serialize_teacher(model):
    """A frozen teacher's config without its user's compile state (its optimizer is not the
    trainer's; see `Trainer._teachers_detached`)."""
    if model is None:
        return None
    config = dict(keras.saving.serialize_keras_object(model))
    config.pop("compile_config", None)
    return config
