"""Self-distillation: a network's deepest output teaches classifier heads on its own stages."""
import keras
import tensorflow as tf

from tfkd.knowledge import Hint
from tfkd.knowledge import SoftTargets
from tfkd.knowledge import View
from tfkd.taps import Tap
from tfkd.taps import find_layer
from tfkd.training import MAIN
from tfkd.training import Holder
from tfkd.training import Step
from tfkd.training import Trainer
from tfkd.training import check_model
from tfkd.training import logits_width
from tfkd.training import weighted


@keras.saving.register_keras_serializable(package="tfkd")
class SelfDistillation(Trainer):
    """Be your own teacher: auxiliary heads on intermediate stages learn from the deepest output.

    Paper: L. Zhang, J. Song, A. Gao, J. Chen, C. Bao, K. Ma, "Be Your Own Teacher: Improve
    the Performance of Convolutional Neural Networks via Self Distillation", ICCV 2019.

    For every stage `i` (a layer of the student, by name) a small head is attached: a 3x3
    conv (strided towards the deepest feature's resolution) - ReLU, then `head_depth - 1`
    more 3x3 conv - ReLU, giving the head's feature `F_i`, then global pooling and a Dense
    classifier giving `z_i`. With the
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
        head_depth: conv layers per head (BYOT's heads are ResNet bottleneck blocks, several
            convs deep). Deeper heads can make the features their stage is asked for less
            linear; `benchmarks/results/schemes_self_ablation.md` measures the effect.

    Example:

    ```python
    import keras, numpy as np, tfkd

    inputs = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stage1")(inputs)
    h = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu",
                            name="stage2")(h)
    logits = keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(h))
    student = keras.Model(inputs, logits)
    sd = tfkd.schemes.SelfDistillation(student, ["stage1"], hint_layer="stage2", head_depth=2)
    sd.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    sd.fit(np.random.rand(32, 16, 16, 3), np.random.randint(0, 5, 32), epochs=1, verbose=0)
    exit_model = sd.early_exit("stage1")  # a plain Keras model with stage1's head
    ```
    """

    def __init__(self, student, stages, hint_layer=None, temperature=3.0, kd_weight=0.3,
                 hint_weight=0.03, head_loss_weight=0.7, student_loss_weight=1.0,
                 head_width=32, head_depth=1, name="self_distillation", **kwargs):
        super().__init__(name=name, **kwargs)
        check_model(student, "student", "SelfDistillation")
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
        self.set_numbers("SelfDistillation", positive=("temperature",), temperature=temperature,
                         kd_weight=kd_weight, hint_weight=hint_weight,
                         head_loss_weight=head_loss_weight,
                         student_loss_weight=student_loss_weight)
        self.head_width = int(head_width)
        if isinstance(head_depth, bool) or int(head_depth) != head_depth or head_depth < 1:
            raise ValueError(f"SelfDistillation: head_depth must be an integer >= 1 (conv "
                             f"layers per head); got {head_depth!r}.")
        self.head_depth = int(head_depth)

        self._taps = Holder()
        features = stages + ([hint_layer] if hint_layer else [])
        self._taps.student = Tap(student, features, side="student")
        view = self._taps.student.symbolic_view()
        classes = logits_width(view, "student", "SelfDistillation")
        deep = view.features[hint_layer] if hint_layer else None
        self.heads = []
        self.kd_terms, self.hint_terms = [], []
        for stage in stages:
            feat = view.features[stage]
            key = _key(stage)
            head = _make_head(key, feat.shape, None if deep is None else deep.shape, classes,
                              self.head_width, self.head_depth)
            self.heads.append(head)
            logits, head_feat = head(feat)
            kd = SoftTargets(temperature=self.temperature, weight=self.kd_weight,
                             name=f"{key}_kd")
            kd.build_term(View(view.outputs), View(logits))
            self.kd_terms.append(kd)
            if deep is not None:
                hint = Hint(f"{key}_head", hint_layer, adapter="auto", weight=self.hint_weight,
                            name=f"{key}_hint")
                hint.build_term(View(None, {hint_layer: deep}),
                                View(None, {f"{key}_head": head_feat}))
                self.hint_terms.append(hint)
        keys = [_key(st) for st in stages]
        self.declare(["student_loss"] + [f"{k}_head_loss" for k in keys]
                     + [f"{k}_kd_loss" for k in keys]
                     + ([f"{k}_hint_loss" for k in keys] if deep is not None else []))
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

    def metric_keys(self):
        return [self.student.name] + [_key(s) for s in self.stages]

    def optimizer_groups(self):
        return {MAIN: [self.student, *self.heads, *self.hint_terms]}

    def requires_task_loss(self):
        return True

    # -- the step: the deepest output (stopped) teaches the heads ---------------------------
    def learn(self, x, y, sample_weight, teaching, training):
        if y is None:
            raise ValueError("SelfDistillation needs labels: feed (x, y) batches.")
        view = self._taps.student(x, training=training)
        z = view.output()
        teacher = View(tf.stop_gradient(z))
        deep = tf.stop_gradient(view.features[self.hint_layer]) if self.hint_layer else None
        losses = {"student_loss": weighted(self.task_loss(y, z, sample_weight),
                                           self.student_loss_weight)}
        preds = {self.student.name: z}
        for i, stage in enumerate(self.stages):
            key = _key(stage)
            logits, feat = self.heads[i](view.features[stage], training=training)
            preds[key] = logits
            losses[f"{key}_head_loss"] = weighted(self.task_loss(y, logits, sample_weight),
                                                  self.head_loss_weight)
            kd = self.kd_terms[i].loss(teacher, View(logits), y_true=y,
                                       sample_weight=sample_weight)
            losses[f"{key}_kd_loss"] = weighted(kd, self.kd_weight)
            if deep is not None:
                hint = self.hint_terms[i].loss(View(None, {self.hint_layer: deep}),
                                               View(None, {f"{key}_head": feat}),
                                               sample_weight=sample_weight)
                losses[f"{key}_hint_loss"] = weighted(hint, self.hint_weight)
        return Step(losses, preds)

    # -- serialization: the constructor's arguments, by name (tfkd.training.Trainer) ----
    config_keys = ('student', 'stages', 'hint_layer', 'temperature', 'kd_weight', 'hint_weight', 'head_loss_weight', 'student_loss_weight', 'head_width', 'head_depth')


def _key(stage):
    return stage.replace("/", "_")


def _make_head(key, feat_shape, deep_shape, classes, width, depth=1):
    """[Conv(3x3, strided) - ReLU] + (depth - 1) x [Conv(3x3) - ReLU] -> feature;
    GAP -> Dense -> logits (BYOT's bottleneck, `depth` convs deep)."""
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
        for k in range(2, depth + 1):
            h = keras.layers.Conv2D(channels, 3, padding="same", activation="relu",
                                    name=f"{key}_head_conv{k}")(h)
        pooled = keras.layers.GlobalAveragePooling2D(name=f"{key}_head_pool")(h)
        feature = pooled if deep_shape is not None and len(deep_shape) == 2 else h
    else:
        flat = inputs if len(feat_shape) == 2 else keras.layers.Flatten()(inputs)
        pooled = keras.layers.Dense(channels, activation="relu", name=f"{key}_head_dense")(flat)
        for k in range(2, depth + 1):
            pooled = keras.layers.Dense(channels, activation="relu",
                                        name=f"{key}_head_dense{k}")(pooled)
        feature = pooled
    logits = keras.layers.Dense(classes, name=f"{key}_head_logits")(pooled)
    return keras.Model(inputs, [logits, feature], name=f"{key}_head")
