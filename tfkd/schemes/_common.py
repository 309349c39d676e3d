"""Plumbing shared by the schemes: validation, loss reduction, replica scaling, compile.

Every scheme is a `keras.Model` whose `train_step` computes its losses from the knowledge
terms of `tfkd.knowledge` (never its own copies of them). The rules of `tfkd.Distiller`
hold here too: a per-replica loss is divided by `num_replicas_in_sync` before the gradient
(Keras sums gradients over replicas), metrics are updated with the unscaled value.
"""
import keras
import tensorflow as tf
from keras import ops
from keras.src.trainers.data_adapters import data_adapter_utils

from tfkd import steps
from tfkd.knowledge.base import View
from tfkd.taps import Tap

__all__ = ["SchemeModel", "View", "Tap"]

ser = keras.saving.serialize_keras_object


def de(config, custom_objects=None):
    if config is None:
        return None
    return keras.saving.deserialize_keras_object(config, custom_objects=custom_objects)


scale = steps.scale_for_replicas
stop = steps.stop_gradient_view
unique_names = steps.unique_names
dedupe = steps.unique_variables


def replicas():
    return tf.distribute.get_strategy().num_replicas_in_sync


def reduce_batch(value, sample_weight=None):
    """Per-sample loss (batch,) -> scalar, the way `Knowledge.loss` reduces (sum(l*w)/batch)."""
    value = ops.cast(value, "float32")
    if len(value.shape) == 0:
        return value
    if sample_weight is not None:
        value = value * ops.cast(ops.reshape(sample_weight, (-1,)), "float32")
    return ops.sum(value) / ops.cast(ops.shape(value)[0], "float32")


def batch_size_of(x):
    return ops.shape(keras.tree.flatten(x)[0])[0]


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


def as_task_loss(loss):
    """Any Keras loss spec as a `keras.losses.Loss` (which scales itself for the replicas)."""
    if loss is None:
        return None
    fn = keras.losses.get(loss)
    if isinstance(fn, keras.losses.Loss):
        return fn
    return keras.losses.LossFunctionWrapper(fn)


def clone(obj):
    """A fresh copy of a serializable Keras object (optimizer, metric, loss, knowledge term)."""
    if obj is None or isinstance(obj, str):
        return obj
    return de(ser(obj))


def expand_metrics(metrics, keys):
    """A flat metrics list -> {key: [fresh copies]} so each output gets its own metric objects."""
    if metrics is None or isinstance(metrics, dict):
        return metrics
    if not isinstance(metrics, (list, tuple)):
        metrics = [metrics]
    return {key: [clone(m) for m in metrics] for key in keys}


class _Holder:
    """Keeps tap models out of Keras' tracking (they share every weight with the models)."""


class SchemeModel(keras.Model):
    """Base of the schemes: compile with one optimizer per trained network, own trackers.

    Subclasses list the extra optimizers they need in `extra_optimizers` (e.g.
    `("discriminator_optimizer",)`); `compile` then insists on getting each of them, either as
    keyword arguments or as `optimizer=[main, extra...]`.
    """

    extra_optimizers = ()
    extra_optimizer_roles = {}
    main_optimizer_role = "the student"
    requires_loss = True

    def build(self, input_shape=None):
        self.built = True

    # -- steps of a scheme with one optimizer: the subclass gives `_forward(x, y,
    # sample_weight, training)` -> losses (the total first) and `_update(losses, x, y,
    # sample_weight)` -> logs; schemes with more optimizers override `train_step`.
    def train_step(self, data):
        x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            losses = self._forward(x, y, sample_weight, True)
            scaled = self.optimizer.scale_loss(losses[0])
        variables = dedupe(self.trainable_variables)
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        return self._update(losses, x, y, sample_weight)

    def test_step(self, data):
        x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(data)
        return self._update(self._forward(x, y, sample_weight, False), x, y, sample_weight)

    # -- compile ---------------------------------------------------------------------------
    def compile(self, optimizer="adam", loss=None, metrics=None, **kwargs):
        owner = type(self).__name__
        extras = {key: kwargs.pop(key, None) for key in self.extra_optimizers}
        if isinstance(optimizer, (list, tuple)):
            wanted = 1 + len(self.extra_optimizers)
            if len(optimizer) != wanted:
                raise ValueError(
                    f"{owner} trains {wanted} network(s) and needs {wanted} optimizer(s) "
                    f"({self._roles()}); got a list of {len(optimizer)}."
                )
            optimizer, *rest = optimizer
            for key, opt in zip(self.extra_optimizers, rest):
                if extras[key] is not None:
                    raise ValueError(f"{owner}: `{key}` was given twice (in the list and by name).")
                extras[key] = opt
        missing = [k for k, v in extras.items() if v is None]
        if missing:
            raise ValueError(
                f"{owner} trains {_count(1 + len(self.extra_optimizers))} networks and needs "
                f"{_count(1 + len(self.extra_optimizers))} optimizers ({self._roles()}), but "
                f"compile() got only `optimizer`. Pass e.g. compile(optimizer=keras.optimizers.Adam(1e-3), "
                f"{missing[0]}=keras.optimizers.Adam(1e-3), ...), or "
                f"optimizer=[student_optimizer, {', '.join(missing)}]."
            )
        if self.requires_loss and loss is None:
            raise ValueError(
                f"{owner}.compile() needs the task `loss`, e.g. loss=keras.losses."
                "SparseCategoricalCrossentropy(from_logits=True)."
            )
        optimizer = keras.optimizers.get(optimizer)
        extras = {k: keras.optimizers.get(v) for k, v in extras.items()}
        for key, opt in extras.items():
            if opt is optimizer:
                raise ValueError(
                    f"{owner}: `optimizer` and `{key}` are the same optimizer object; each "
                    "network needs its own (its slots and step count are per optimizer). Pass "
                    "two instances, e.g. keras.optimizers.Adam(1e-3) twice."
                )
        self._compile_args = {"optimizer": optimizer, "loss": loss, "metrics": metrics}
        self._compile_args.update(extras)
        self._compile_kwargs = dict(kwargs)
        self.task_loss = as_task_loss(loss)
        for key, opt in extras.items():
            setattr(self, key, opt)
        super().compile(optimizer=optimizer, loss=None,
                        metrics=self._keras_metrics(metrics), **kwargs)
        # Keras builds `optimizer` before the first step; the others are built here, in the
        # model's strategy scope: building lazily inside a replica's step breaks under
        # MirroredStrategy.
        with self.distribute_strategy.scope():
            for key, variables in self._extra_variables().items():
                getattr(self, key).build(variables)

    def _roles(self):
        roles = [f"`optimizer` for {self.main_optimizer_role}"]
        roles += [f"`{k}` for {self.extra_optimizer_roles.get(k, k)}" for k in self.extra_optimizers]
        return ", ".join(roles)

    def _keras_metrics(self, metrics):
        return metrics

    def get_compile_config(self):
        if getattr(self, "_compile_args", None) is None:
            return None
        config = {k: ser(v) for k, v in self._compile_args.items() if v is not None}
        config.update({k: v for k, v in self._compile_kwargs.items()
                       if isinstance(v, (bool, int, float, str))})
        return config

    def compile_from_config(self, config):
        self.compile(**{k: _de_any(v) for k, v in config.items()})
        # Build the main optimizer now too, so that its saved state loads into it.
        self.optimizer.build(self._main_variables())

    def _main_variables(self):
        return dedupe(self.trainable_variables)

    def _extra_variables(self):
        return {}

    # -- metrics ---------------------------------------------------------------------------
    def _metric_keys(self):
        """Names of the outputs that each get the compiled metrics (None: one output)."""
        return None

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        keys = self._metric_keys()
        if keys is not None:
            # Keras also calls this with `call()`'s output alone (its symbolic build under a
            # distribution strategy): give every key a prediction so the metric names agree.
            given = y_pred if isinstance(y_pred, dict) else {}
            base = y_pred if not isinstance(y_pred, dict) else next(iter(y_pred.values()))
            y_pred = {k: given.get(k, base) for k in keys}
            if not isinstance(y, dict):
                y = {k: y for k in keys}
        return super().compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _trackers(self):
        """Loss trackers (keras.metrics.Mean), in reporting order. Subclasses override."""
        return []

    @property
    def metrics(self):
        tracked = list(self._trackers())
        # Compiled metrics are built by their first update (DataFree only updates them when
        # evaluating), and Keras reads every metric's result at the end of `fit`.
        if self._compile_metrics is not None and self._compile_metrics.built:
            tracked.append(self._compile_metrics)
        return tracked

    def _track(self, tracker, value, x, per_replica_scaled=False):
        batch = batch_size_of(x)
        if per_replica_scaled:
            value = value * replicas()
        tracker.update_state(value, sample_weight=batch)


def _count(n):
    return {2: "two", 3: "three"}.get(n, str(n))


def _de_any(value):
    if isinstance(value, dict):
        return de(value)
    if isinstance(value, (list, tuple)):
        return [_de_any(v) for v in value]
    return value


def make_tap(model, features, side):
    return Tap(model, list(dict.fromkeys(features)), side=side)


def holder():
    return _Holder()
