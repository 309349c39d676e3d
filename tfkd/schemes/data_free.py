"""Data-free distillation: a generator synthesises the inputs; the student never sees real data."""
import keras
import tensorflow as tf
from keras import ops
from keras.src.trainers.data_adapters import data_adapter_utils

from tfkd.knowledge import SoftTargets
from tfkd.knowledge import as_knowledge
from tfkd import steps
from tfkd.schemes import _common as c
from tfkd.taps import _walk
from tfkd.taps import model_input_spec


@keras.saving.register_keras_serializable(package="tfkd")
class DataFree(c.SchemeModel):
    """Trains a generator to produce inputs the teacher finds typical, and the student on them.

    Papers: H. Chen et al., "Data-Free Learning of Student Networks" (DAFL), ICCV 2019;
    H. Yin et al., "Dreaming to Distill: Data-free Knowledge Transfer via DeepInversion",
    CVPR 2020 (BatchNorm-statistics matching); G. Fang et al., "Data-Free Adversarial
    Distillation", 2019 (the optional adversarial term).

    Each `train_step` draws `z ~ N(0, I)` (`batch_size` of them, split over replicas),
    synthesises `x^ = G(z)` and runs the teacher (inference mode) and the student once on it.
    With `p = softmax(z_t)` and `c_i = argmax z_t,i` (the teacher's own label):

        L_G = one_hot_weight   * mean_i CE(c_i, z_t,i)           (confident teacher, DAFL L_oh)
            + entropy_weight   * sum_k pbar_k log pbar_k          (all classes used, -H(pbar))
            + bn_weight        * sum_BN ||mu(x^) - mu_BN||_2 + ||var(x^) - var_BN||_2
            + activation_weight * -mean |f_t|                      (DAFL L_a, `activation_layer`)
            - adversarial_weight * KD(teacher, student)            (DFAD: seek disagreement)
        L_S = sum_terms weight * term(teacher on x^, student on x^)

    `mu(x^), var(x^)` are the batch statistics of the input of each BatchNormalization layer
    of the teacher, `mu_BN, var_BN` its moving statistics. The student's terms are
    `tfkd.knowledge` terms (default `[SoftTargets(temperature=1.0)]`); terms that need labels
    get the teacher's arg-max. `G` only updates with the generator optimizer, the student only
    with its own: `compile(optimizer=..., generator_optimizer=...)`.

    The data handed to `fit` is not looked at: call `fit(epochs=..., steps_per_epoch=...)`
    with no `x` (a placeholder dataset is used), and pass real `validation_data=(x, y)` only
    to watch the student (`evaluate` reports the compiled metrics of the student on it).

    Metrics: `loss` (student), each term's `<name>_loss`, `generator_loss`, `one_hot_loss`,
    `entropy` (of the teacher's mean prediction), `bn_loss`, `activation_loss`.

    Args:
        teacher: trained Keras model (frozen). For `bn_weight > 0` it needs BatchNormalization
            layers (the statistics to match).
        student: the Keras model to train.
        generator: a Keras model `z (latent_dim,) -> input` or None for the DAFL generator
            (Dense - BN - [Upsample - Conv - BN - LeakyReLU] x2 - Conv - tanh), rescaled to
            `input_range`.
        latent_dim: size of `z`.
        batch_size: synthetic images per step (global).
        knowledge: the student's terms.
        one_hot_weight, entropy_weight, bn_weight, activation_weight, adversarial_weight:
            the generator's loss weights above (DAFL: 1, 5, -, 0.1; DeepInversion's BN term).
        activation_layer: teacher layer for the activation loss (DAFL: the penultimate
            feature), or None.
        input_range: (low, high) of the teacher's inputs (e.g. (0, 1), or (0, 255)).
        generator_width: channels of the default generator (its last conv has width, the
            first 2 * width).
    """

    extra_optimizers = ("generator_optimizer",)
    extra_optimizer_roles = {"generator_optimizer": "the generator"}
    requires_loss = False

    def __init__(self, teacher, student, generator=None, latent_dim=100, batch_size=64,
                 knowledge=None, one_hot_weight=1.0, entropy_weight=5.0, bn_weight=1.0,
                 activation_weight=0.0, activation_layer=None, adversarial_weight=0.0,
                 input_range=(0.0, 1.0), generator_width=64, name="data_free", **kwargs):
        super().__init__(name=name, **kwargs)
        owner = "DataFree"
        c.check_model(teacher, "teacher", owner)
        c.check_model(student, "student", owner)
        if teacher is student:
            raise ValueError(f"{owner}: teacher and student are the same model.")
        self.teacher = teacher
        teacher.trainable = False
        self.student = student
        self.latent_dim = int(latent_dim)
        self.batch_size = int(batch_size)
        for key, value in (("one_hot_weight", one_hot_weight), ("entropy_weight", entropy_weight),
                           ("bn_weight", bn_weight), ("activation_weight", activation_weight),
                           ("adversarial_weight", adversarial_weight)):
            value = float(value)
            if not value >= 0:
                raise ValueError(f"{owner}: `{key}` must be >= 0, got {value}.")
            setattr(self, key, value)
        if self.activation_weight > 0 and not activation_layer:
            raise ValueError(
                f"{owner}: activation_weight > 0 needs `activation_layer`, the name of the "
                "teacher layer whose activations should be large (DAFL: the penultimate "
                "feature, e.g. the global pooling output)."
            )
        self.activation_layer = activation_layer
        self.input_range = (float(input_range[0]), float(input_range[1]))
        self.generator_width = int(generator_width)
        if knowledge is None:
            knowledge = [SoftTargets(temperature=1.0)]
        if not isinstance(knowledge, (list, tuple)):
            knowledge = [knowledge]
        self.knowledge = [as_knowledge(k) for k in knowledge]
        c.unique_names(self.knowledge)

        t_spec = model_input_spec(teacher, "teacher")
        s_spec = model_input_spec(student, "student")
        if tuple(t_spec.shape[1:]) != tuple(s_spec.shape[1:]):
            raise ValueError(
                f"{owner}: the teacher takes inputs of shape {tuple(t_spec.shape[1:])} and the "
                f"student {tuple(s_spec.shape[1:])}; both see the same synthetic images. Put a "
                "keras.layers.Resizing layer at the front of the student."
            )
        self.image_shape = tuple(t_spec.shape[1:])

        # BatchNorm layers and the layers that feed them (their outputs are the BN inputs).
        self._bn = []
        if self.bn_weight > 0:
            self._bn = _bn_inputs(teacher)
            if not self._bn:
                raise ValueError(
                    f"{owner}: bn_weight={self.bn_weight} asks to match the teacher's "
                    f"BatchNorm statistics, but the teacher `{teacher.name}` has no "
                    "BatchNormalization layer (reached by name, also in nested models). Set "
                    "bn_weight=0 for DAFL-style data-free distillation (one-hot, entropy and "
                    "activation losses only), or use a teacher with BatchNorm."
                )
        t_feats = [f for t in self.knowledge for f in t.teacher_features]
        t_feats += [path for path, _ in self._bn]
        if self.activation_layer:
            t_feats.append(self.activation_layer)
        s_feats = [f for t in self.knowledge for f in t.student_features]
        self._taps = c.holder()
        self._taps.teacher = c.make_tap(teacher, t_feats, "teacher")
        self._taps.student = c.make_tap(student, s_feats, "student")
        t_view = self._taps.teacher.symbolic_view()
        s_view = self._taps.student.symbolic_view()
        c.logits_width(t_view, "teacher", owner)
        for term in self.knowledge:
            term.build_term(t_view, s_view)
        if self.adversarial_weight > 0:
            self._adv_term = SoftTargets(temperature=1.0, name="adversarial")
            self._adv_term.build_term(t_view, s_view)

        if generator is None:
            generator = default_generator(self.latent_dim, self.image_shape, self.input_range,
                                          self.generator_width)
        c.check_model(generator, "generator", owner)
        g_out = generator.compute_output_spec(keras.KerasTensor((None, self.latent_dim)))
        if tuple(g_out.shape[1:]) != self.image_shape:
            raise ValueError(
                f"{owner}: the generator maps z ({self.latent_dim},) to {tuple(g_out.shape[1:])}"
                f" but the teacher takes {self.image_shape}."
            )
        self.generator = generator

        self.total_tracker = keras.metrics.Mean(name="loss")
        self.term_trackers = [keras.metrics.Mean(name=f"{t.name}_loss") for t in self.knowledge]
        self.g_tracker = keras.metrics.Mean(name="generator_loss")
        self.oh_tracker = keras.metrics.Mean(name="one_hot_loss")
        self.ie_tracker = keras.metrics.Mean(name="entropy")
        self.bn_tracker = keras.metrics.Mean(name="bn_loss")
        self.act_tracker = keras.metrics.Mean(name="activation_loss")
        self.val_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.built = True  # everything is built here; nothing waits for data

    # -- API -------------------------------------------------------------------------------
    def call(self, inputs, training=False):
        return self.student(inputs, training=training)

    def generate(self, n, training=False):
        """`n` synthetic inputs from the generator."""
        z = tf.random.normal((n, self.latent_dim))
        return self.generator(z, training=training)

    def fit(self, x=None, y=None, **kwargs):
        if x is None:
            if not kwargs.get("steps_per_epoch"):
                raise ValueError(
                    "DataFree.fit() without data needs `steps_per_epoch` (the synthetic "
                    "batches per epoch), e.g. fit(epochs=10, steps_per_epoch=100)."
                )
            # One placeholder row per replica (a batch is split over the replicas).
            rows = self.distribute_strategy.num_replicas_in_sync
            x = tf.data.Dataset.from_tensors(tf.zeros((rows, 1))).repeat()
            kwargs.setdefault("shuffle", False)
        return super().fit(x, y, **kwargs)

    def _trackers(self):
        return [self.total_tracker, *self.term_trackers, self.g_tracker, self.oh_tracker,
                self.ie_tracker, self.bn_tracker, self.act_tracker, self.val_loss_tracker]

    def _main_variables(self):
        g_ids = {id(v) for v in self.generator.trainable_variables}
        return [v for v in c.dedupe(self.trainable_variables) if id(v) not in g_ids]

    def _extra_variables(self):
        return {"generator_optimizer": c.dedupe(self.generator.trainable_variables)}

    # -- steps -----------------------------------------------------------------------------
    def _bn_loss(self, t_view):
        total = ops.zeros((), "float32")
        for path, bn in self._bn:
            h = ops.cast(t_view.features[path], "float32")
            axis = bn.axis if isinstance(bn.axis, int) else bn.axis[0]
            axis = axis % len(h.shape)
            axes = [i for i in range(len(h.shape)) if i != axis]
            mean, var = tf.nn.moments(h, axes=axes)
            total = total + ops.norm(mean - ops.cast(bn.moving_mean, "float32")) + ops.norm(
                var - ops.cast(bn.moving_variance, "float32"))
        return total

    def train_step(self, data):
        n = max(1, self.batch_size // c.replicas())
        z = tf.random.normal((n, self.latent_dim))
        with tf.GradientTape() as g_tape, tf.GradientTape() as s_tape:
            x_hat = self.generator(z, training=True)
            t_view = self._taps.teacher(x_hat, training=False)
            s_view = self._taps.student(x_hat, training=True)
            z_t = ops.cast(t_view.output(), "float32")
            pseudo = ops.argmax(z_t, axis=-1)
            one_hot = ops.mean(-ops.sum(ops.one_hot(pseudo, z_t.shape[-1]) *
                                        ops.log_softmax(z_t, axis=-1), axis=-1))
            p_bar = ops.mean(ops.softmax(z_t, axis=-1), axis=0)
            entropy = -ops.sum(p_bar * ops.log(ops.maximum(p_bar, 1e-12)))
            bn = self._bn_loss(t_view) if self._bn else ops.zeros((), "float32")
            act = ops.zeros((), "float32")
            if self.activation_layer:
                act = -ops.mean(ops.abs(ops.cast(t_view.features[self.activation_layer],
                                                 "float32")))
            g_loss = (self.one_hot_weight * one_hot - self.entropy_weight * entropy
                      + self.bn_weight * bn + self.activation_weight * act)
            if self.adversarial_weight > 0:
                g_loss = g_loss - self.adversarial_weight * self._adv_term.loss(t_view, s_view)
            g_loss = c.scale(g_loss)
            # The student learns from the teacher on the same images (their gradient w.r.t.
            # the student's weights does not reach the generator).
            teacher = c.stop(t_view)
            total, terms = steps.knowledge_losses(self.knowledge, teacher, s_view,
                                                  tf.stop_gradient(pseudo))
            total = total + steps.regularization_loss(self.student, self.knowledge)
            g_scaled = self.generator_optimizer.scale_loss(g_loss)
            s_scaled = self.optimizer.scale_loss(total)
        g_vars = self._extra_variables()["generator_optimizer"]
        s_vars = self._main_variables()
        g_grads = g_tape.gradient(g_scaled, g_vars)
        s_grads = s_tape.gradient(s_scaled, s_vars)
        self.generator_optimizer.apply_gradients(zip(g_grads, g_vars))
        self.optimizer.apply_gradients(zip(s_grads, s_vars))
        self._track(self.total_tracker, total, z, per_replica_scaled=True)
        for tr, v in zip(self.term_trackers, terms):
            self._track(tr, v, z)
        self._track(self.g_tracker, g_loss, z, per_replica_scaled=True)
        self._track(self.oh_tracker, one_hot, z)
        self._track(self.ie_tracker, entropy, z)
        self._track(self.bn_tracker, bn, z)
        self._track(self.act_tracker, act, z)
        return {m.name: m.result() for m in self._trackers()[:-1]}

    def test_step(self, data):
        """Evaluates the student on real (x, y): compiled loss and metrics only."""
        x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(data)
        y_pred = self.student(x, training=False)
        if self.task_loss is not None and y is not None:
            value = ops.cast(self.task_loss(y, y_pred, sample_weight), "float32")
            self._track(self.val_loss_tracker, value, x, per_replica_scaled=True)
        if y is None:
            return {}
        metrics = self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        return {k: v for k, v in metrics.items()
                if k in {"student_loss"} or k not in {m.name for m in self._trackers()}}

    # -- serialization ---------------------------------------------------------------------
    def get_config(self):
        return {
            "name": self.name,
            "teacher": c.ser(self.teacher),
            "student": c.ser(self.student),
            "generator": c.ser(self.generator),
            "latent_dim": self.latent_dim,
            "batch_size": self.batch_size,
            "knowledge": [c.ser(t) for t in self.knowledge],
            "one_hot_weight": self.one_hot_weight,
            "entropy_weight": self.entropy_weight,
            "bn_weight": self.bn_weight,
            "activation_weight": self.activation_weight,
            "activation_layer": self.activation_layer,
            "adversarial_weight": self.adversarial_weight,
            "input_range": list(self.input_range),
            "generator_width": self.generator_width,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        de = lambda v: c.de(v, custom_objects)  # noqa: E731
        for key in ("teacher", "student", "generator"):
            config[key] = de(config[key])
        config["knowledge"] = [de(t) for t in config.get("knowledge", [])]
        return cls(**config)


def _bn_inputs(model):
    """[(path of the layer feeding a BN layer, the BN layer)] for every BN layer of `model`."""
    found = []
    for path, layer in _walk(model):
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        # Node 0 is the call that built the model's own graph (tap models add later nodes).
        nodes = getattr(layer, "_inbound_nodes", [])
        if not nodes or not nodes[0].input_tensors:
            raise ValueError(
                f"DataFree: the teacher's BatchNormalization layer {path!r} is not connected "
                "in a functional graph, so its input cannot be tapped. Use bn_weight=0."
            )
        producer = nodes[0].input_tensors[0]._keras_history.operation
        if isinstance(producer, keras.layers.InputLayer):
            raise ValueError(
                f"DataFree: the teacher's BatchNormalization layer {path!r} normalises the "
                "model input directly; its input cannot be tapped. Use bn_weight=0."
            )
        prefix = path.rsplit("/", 1)[0] + "/" if "/" in path else ""
        found.append((prefix + producer.name, layer))
    return found


def default_generator(latent_dim, image_shape, input_range=(0.0, 1.0), width=64):
    """DAFL's generator for a (H, W, C) image, outputs in `input_range`."""
    h, w, channels = image_shape
    h0, w0 = max(1, -(-h // 4)), max(1, -(-w // 4))
    z = keras.Input((latent_dim,), name="z")
    x = keras.layers.Dense(2 * width * h0 * w0, name="g_fc")(z)
    x = keras.layers.Reshape((h0, w0, 2 * width))(x)
    x = keras.layers.BatchNormalization(name="g_bn0")(x)
    x = keras.layers.UpSampling2D(2, interpolation="nearest", name="g_up1")(x)
    x = keras.layers.Conv2D(2 * width, 3, padding="same", name="g_conv1")(x)
    x = keras.layers.BatchNormalization(name="g_bn1")(x)
    x = keras.layers.LeakyReLU(0.2)(x)
    x = keras.layers.UpSampling2D(2, interpolation="nearest", name="g_up2")(x)
    x = keras.layers.Conv2D(width, 3, padding="same", name="g_conv2")(x)
    x = keras.layers.BatchNormalization(name="g_bn2")(x)
    x = keras.layers.LeakyReLU(0.2)(x)
    x = keras.layers.Conv2D(channels, 3, padding="same", activation="tanh", name="g_out")(x)
    if (4 * h0, 4 * w0) != (h, w):
        x = keras.layers.Resizing(h, w, name="g_resize")(x)
    low, high = input_range
    x = keras.layers.Rescaling((high - low) / 2.0, offset=(high + low) / 2.0, name="g_range")(x)
    return keras.Model(z, x, name="generator")
