"""Self-distillation: a network's deepest output teaches classifier heads on its own stages."""
import keras
import tensorflow as tf
from keras import ops

from tfkd.knowledge import Hint
from tfkd.knowledge import SoftTargets
from tfkd.schemes import _common as c
from tfkd.taps import find_layer


@keras.saving.register_keras_serializable(package="tfkd")
class SelfDistillation(c.SchemeModel):
    """Be your own teacher: auxiliary heads on intermediate stages learn from the deepest output.

    Paper: L. Zhang, J. Song, A. Gao, J. Chen, C. Bao, K. Ma, "Be Your Own Teacher: Improve
    the Performance of Convolutional Neural Networks via Self Distillation", ICCV 2019.

    For every stage `i` (a layer of the student, by name) a small head is attached: a 3x3
    conv (strided towards the deepest feature's resolution) - ReLU giving the head's
    feature `F_i`, then global pooling and a Dense classifier giving `z_i`. With the
    student's own logits `z` and its deepest feature `F` (layer `hint_layer`):

        L = student_loss_weight * task(y, z)
            + sum_i [ head_loss_weight * task(y, z_i)
                      + kd_weight   * SoftTargets_T(teacher=sg(z), student=z_i)
                      + hint_weight * Hint(F_i -> sg(F)) ]

    `SoftTargets` and `Hint` are the `tfkd.knowledge` terms (the paper's KL and L2 losses).
    Without `hint_layer` there is no hint. The heads only train the stages below them; they
    are never part of `sd.student`, which stays the untouched Keras model (same layers, same
    parameter count). `sd.early_exit(stage)` returns a plain Keras model that stops at that
    stage's head, for a cheaper, earlier prediction.

    Metrics: `loss`, `student_loss`, and per stage `<stage>_head_loss` (task loss of the
    head), `<stage>_kd_loss`, `<stage>_hint_loss`; compiled metrics for the student's output
    (`accuracy`) and each head (`<stage>_accuracy`).

    Args:
        student: a functional or Sequential Keras model producing logits.
        stages: names of the student layers to attach heads to (shallow to deep).
        hint_layer: name of the deepest feature the heads' features regress (or None).
        temperature: `T` of the soft targets (BYOT: 3).
        kd_weight, hint_weight, head_loss_weight: the loss weights above (BYOT: 0.3, 0.03,
            0.7).
        student_loss_weight: weight of the task loss of the student's own output.
        head_width: channels of a head's conv when there is no `hint_layer` to match.
    """

    def __init__(self, student, stages, hint_layer=None, temperature=3.0, kd_weight=0.3,
                 hint_weight=0.03, head_loss_weight=0.7, student_loss_weight=1.0,
                 head_width=32, name="self_distillation", **kwargs):
        super().__init__(name=name, **kwargs)
        c.check_model(student, "student", "SelfDistillation")
        if isinstance(stages, str):
            stages = [stages]
        stages = list(stages or [])
        if not stages:
            raise ValueError(
                "SelfDistillation needs at least one stage: pass stages=['layer_name', ...], "
                "the names of the student layers that get an auxiliary classifier head."
            )
        for stage in stages + ([hint_layer] if hint_layer else []):
            try:
                find_layer(student, stage, side="student")
            except ValueError as err:
                raise ValueError(f"SelfDistillation: {err}") from None
        if len(set(stages)) != len(stages):
            raise ValueError(f"SelfDistillation: a stage is listed twice in {stages}.")
        self.student = student
        self.stages = stages
        self.hint_layer = hint_layer
        self.temperature = float(temperature)
        self.kd_weight = float(kd_weight)
        self.hint_weight = float(hint_weight)
        self.head_loss_weight = float(head_loss_weight)
        self.student_loss_weight = float(student_loss_weight)
        self.head_width = int(head_width)

        self._taps = c.holder()
        features = stages + ([hint_layer] if hint_layer else [])
        self._taps.student = c.make_tap(student, features, "student")
        view = self._taps.student.symbolic_view()
        classes = c.logits_width(view, "student", "SelfDistillation")
        deep = view.features[hint_layer] if hint_layer else None
        self.heads = []
        self.kd_terms, self.hint_terms = [], []
        for stage in stages:
            feat = view.features[stage]
            key = _key(stage)
            head = _make_head(key, feat.shape, None if deep is None else deep.shape, classes,
                              self.head_width)
            self.heads.append(head)
            logits, head_feat = head(feat)
            kd = SoftTargets(temperature=self.temperature, weight=self.kd_weight,
                             name=f"{key}_kd")
            kd.build_term(c.View(view.outputs), c.View(logits))
            self.kd_terms.append(kd)
            if deep is not None:
                hint = Hint(f"{key}_head", hint_layer, adapter="auto", weight=self.hint_weight,
                            name=f"{key}_hint")
                hint.build_term(c.View(None, {hint_layer: deep}),
                                c.View(None, {f"{key}_head": head_feat}))
                self.hint_terms.append(hint)
        self.total_tracker = keras.metrics.Mean(name="loss")
        self.student_tracker = keras.metrics.Mean(name="student_loss")
        self.head_trackers = [keras.metrics.Mean(name=f"{_key(s)}_head_loss") for s in stages]
        self.kd_trackers = [keras.metrics.Mean(name=f"{_key(s)}_kd_loss") for s in stages]
        self.hint_trackers = [keras.metrics.Mean(name=f"{_key(s)}_hint_loss")
                              for s in stages] if deep is not None else []
        self.built = True  # everything is built here; nothing waits for data

    # -- API -------------------------------------------------------------------------------
    def call(self, inputs, training=False):
        return self.student(inputs, training=training)

    def early_exit(self, stage, name=None):
        """A plain Keras model: the student up to `stage`, then that stage's head (logits)."""
        if stage not in self.stages:
            raise ValueError(f"No head at {stage!r}; the heads are at {self.stages}.")
        head = self.heads[self.stages.index(stage)]
        layer = find_layer(self.student, stage, side="student")
        try:
            feat = layer.output
            model = keras.Model(self.student.inputs, head(feat)[0],
                                name=name or f"{self.student.name}_exit_{_key(stage)}")
        except Exception as err:  # nested stage: its output is not connected to the inputs
            raise ValueError(
                f"early_exit({stage!r}): the layer must sit at the top level of the student "
                f"(not inside a nested model) to cut the graph there ({err})."
            ) from None
        return model

    def _metric_keys(self):
        return [self.student.name] + [_key(s) for s in self.stages]

    def _keras_metrics(self, metrics):
        return c.expand_metrics(metrics, self._metric_keys())

    def _trackers(self):
        return [self.total_tracker, self.student_tracker, *self.head_trackers,
                *self.kd_trackers, *self.hint_trackers]

    # -- steps -----------------------------------------------------------------------------
    def _forward(self, x, y, sample_weight, training):
        if y is None:
            raise ValueError("SelfDistillation needs labels: feed (x, y) batches.")
        view = self._taps.student(x, training=training)
        z = view.output()
        teacher = c.View(tf.stop_gradient(z))
        deep = tf.stop_gradient(view.features[self.hint_layer]) if self.hint_layer else None
        task = ops.cast(self.task_loss(y, z, sample_weight), "float32")
        total = self.student_loss_weight * task
        heads, kds, hints, preds = [], [], [], {self.student.name: z}
        for i, stage in enumerate(self.stages):
            key = _key(stage)
            logits, feat = self.heads[i](view.features[stage], training=training)
            preds[key] = logits
            ce = ops.cast(self.task_loss(y, logits, sample_weight), "float32")
            kd = self.kd_terms[i].loss(teacher, c.View(logits), y_true=y,
                                       sample_weight=sample_weight)
            total = total + self.head_loss_weight * ce + self.kd_weight * c.scale(kd)
            heads.append(ce)
            kds.append(kd)
            if deep is not None:
                hint = self.hint_terms[i].loss(c.View(None, {self.hint_layer: deep}),
                                               c.View(None, {f"{key}_head": feat}),
                                               sample_weight=sample_weight)
                total = total + self.hint_weight * c.scale(hint)
                hints.append(hint)
        reg = [ops.cast(l, "float32") for l in self.student.losses]
        reg += [ops.cast(l, "float32") for h in self.heads for l in h.losses]
        if reg:
            total = total + c.scale(ops.sum(ops.stack(reg)))
        return total, task, heads, kds, hints, preds

    def _update(self, losses, x, y, sample_weight):
        total, task, heads, kds, hints, preds = losses
        self._track(self.total_tracker, total, x, per_replica_scaled=True)
        self._track(self.student_tracker, task, x, per_replica_scaled=True)
        for tr, v in zip(self.head_trackers, heads):
            self._track(tr, v, x, per_replica_scaled=True)
        for tr, v in zip(self.kd_trackers + self.hint_trackers, kds + hints):
            self._track(tr, v, x)
        return self.compute_metrics(x, y, preds, sample_weight=sample_weight)

    # -- serialization ---------------------------------------------------------------------
    def get_config(self):
        return {
            "name": self.name,
            "student": c.ser(self.student),
            "stages": list(self.stages),
            "hint_layer": self.hint_layer,
            "temperature": self.temperature,
            "kd_weight": self.kd_weight,
            "hint_weight": self.hint_weight,
            "head_loss_weight": self.head_loss_weight,
            "student_loss_weight": self.student_loss_weight,
            "head_width": self.head_width,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["student"] = c.de(config["student"], custom_objects)
        return cls(**config)


def _key(stage):
    return stage.replace("/", "_")


def _make_head(key, feat_shape, deep_shape, classes, width):
    """Conv(3x3, strided) - ReLU -> feature; GAP -> Dense -> logits (BYOT's bottleneck)."""
    inputs = keras.Input(tuple(feat_shape[1:]), name=f"{key}_head_input")
    channels = deep_shape[-1] if deep_shape is not None else width
    if len(feat_shape) == 4:
        stride = 1
        if deep_shape is not None and len(deep_shape) == 4 and deep_shape[1] and feat_shape[1]:
            stride = max(1, int(round(feat_shape[1] / deep_shape[1])))
        # No BatchNorm: a head's moving statistics would lag its fast-changing input early
        # in training, and the head is cheap enough without it.
        h = keras.layers.Conv2D(channels, 3, strides=stride, padding="same",
                                name=f"{key}_head_conv")(inputs)
        h = keras.layers.ReLU(name=f"{key}_head_relu")(h)
        pooled = keras.layers.GlobalAveragePooling2D(name=f"{key}_head_pool")(h)
        feature = pooled if deep_shape is not None and len(deep_shape) == 2 else h
    else:
        flat = inputs if len(feat_shape) == 2 else keras.layers.Flatten()(inputs)
        pooled = keras.layers.Dense(channels, activation="relu", name=f"{key}_head_dense")(flat)
        feature = pooled
    logits = keras.layers.Dense(classes, name=f"{key}_head_logits")(pooled)
    return keras.Model(inputs, [logits, feature], name=f"{key}_head")
