"""Data-free distillation: a generator synthesises the inputs; the student never sees real data.

Longer than the other schemes (~200 lines of code): besides the step it finds the input of
every BatchNorm layer of the teacher (DeepInversion's statistics) and carries DAFL's default
generator, so that a user needs only a teacher and a student.
"""
import keras
import tensorflow as tf
from keras import ops

from tfkd import _compat
from tfkd.knowledge import SoftTargets
from tfkd.taps import Tap
from tfkd.taps import _walk
from tfkd.training import MAIN
from tfkd.training import Holder
from tfkd.training import Step
from tfkd.training import Trainer
from tfkd.training import check_model
from tfkd.training import check_pair
from tfkd.training import check_same_inputs
from tfkd.training import logits_width
from tfkd.training import replicas
from tfkd.training import stop_gradient
from tfkd.training import term_losses
from tfkd.training import weighted

GENERATOR = "generator_optimizer"


@keras.saving.register_keras_serializable(package="tfkd")
class DataFree(Trainer):
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

    extra_optimizers = {GENERATOR: "the generator"}
    group_totals = {GENERATOR: "generator_loss"}

    def __init__(self, teacher, student, generator=None, latent_dim=100, batch_size=64,
                 knowledge=None, one_hot_weight=1.0, entropy_weight=5.0, bn_weight=1.0,
                 activation_weight=0.0, activation_layer=None, adversarial_weight=0.0,
                 input_range=(0.0, 1.0), generator_width=64, name="data_free", **kwargs):
        super().__init__(name=name, **kwargs)
        owner = "DataFree"
        check_pair(owner, student, teacher)
        self.teacher = teacher
        self.freeze(teacher)
        self.student = student
        self.latent_dim = int(latent_dim)
        self.batch_size = int(batch_size)
        self.set_numbers(owner, one_hot_weight=one_hot_weight, entropy_weight=entropy_weight,
                         bn_weight=bn_weight, activation_weight=activation_weight,
                         adversarial_weight=adversarial_weight)
        if self.activation_weight > 0 and not activation_layer:
            raise ValueError(
                f"{owner}: activation_weight > 0 needs `activation_layer`, the name of the "
                "teacher layer whose activations should be large (DAFL: the penultimate "
                "feature, e.g. the global pooling output)."
            )
        self.activation_layer = activation_layer
        self.input_range = (float(input_range[0]), float(input_range[1]))
        self.generator_width = int(generator_width)
        self.knowledge = self.knowledge_terms(knowledge, lambda: [SoftTargets(temperature=1.0)])

        check_same_inputs(owner, [("teacher", teacher), ("student", student)],
                          "Both see the same synthetic images: put a keras.layers.Resizing "
                          "layer at the front of the student.")
        from tfkd.taps import model_input_spec

        t_spec = model_input_spec(teacher, "teacher")
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
        self._taps = Holder()
        self._taps.teacher = Tap(teacher, list(dict.fromkeys(t_feats)), side="teacher")
        self._taps.student = Tap(student, list(dict.fromkeys(s_feats)), side="student")
        t_view = self._taps.teacher.symbolic_view()
        s_view = self._taps.student.symbolic_view()
        logits_width(t_view, "teacher", owner)
        for term in self.knowledge:
            term.build_term(t_view, s_view)
        if self.adversarial_weight > 0:
            self._adv_term = SoftTargets(temperature=1.0, name="adversarial")
            self._adv_term.build_term(t_view, s_view)

        if generator is None:
            generator = default_generator(self.latent_dim, self.image_shape, self.input_range,
                                          self.generator_width)
        check_model(generator, "generator", owner)
        g_out = generator.compute_output_spec(keras.KerasTensor((None, self.latent_dim)))
        if tuple(g_out.shape[1:]) != self.image_shape:
            raise ValueError(
                f"{owner}: the generator maps z ({self.latent_dim},) to {tuple(g_out.shape[1:])}"
                f" but the teacher takes {self.image_shape}."
            )
        self.generator = generator

        self.declare(["student_loss", *[f"{t.name}_loss" for t in self.knowledge],
                      "one_hot_loss", "entropy", "bn_loss", "activation_loss",
                      "adversarial_loss"])
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

    def optimizer_groups(self):
        return {MAIN: [self.student, *self.knowledge], GENERATOR: [self.generator]}

    def _teaching_modules(self):
        return [self.teacher]

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

    # -- the step: the teacher runs inside the tape here (the generator's gradient flows
    # through it), in inference mode; the student learns from it on the same images ---------
    def learn(self, x, y, sample_weight, teaching, training):
        if not training:
            return self._evaluate_student(x, y, sample_weight)
        z = tf.random.normal((max(1, self.batch_size // replicas()), self.latent_dim))
        x_hat = self.generator(z, training=True)
        t_view = self._taps.teacher(x_hat, training=False)
        s_view = self._taps.student(x_hat, training=True)
        z_t = ops.cast(t_view.output(), "float32")
        pseudo = ops.argmax(z_t, axis=-1)
        one_hot = ops.mean(-ops.sum(ops.one_hot(pseudo, z_t.shape[-1]) *
                                    ops.log_softmax(z_t, axis=-1), axis=-1))
        p_bar = ops.mean(ops.softmax(z_t, axis=-1), axis=0)
        entropy = -ops.sum(p_bar * ops.log(ops.maximum(p_bar, 1e-12)))
        losses = {
            "one_hot_loss": weighted(one_hot, self.one_hot_weight, GENERATOR),
            # -H(pbar): maximising the entropy of the mean prediction uses every class.
            "entropy": weighted(entropy, -self.entropy_weight, GENERATOR),
        }
        if self._bn:
            losses["bn_loss"] = weighted(self._bn_loss(t_view), self.bn_weight, GENERATOR)
        if self.activation_layer:
            act = -ops.mean(ops.abs(ops.cast(t_view.features[self.activation_layer],
                                             "float32")))
            losses["activation_loss"] = weighted(act, self.activation_weight, GENERATOR)
        if self.adversarial_weight > 0:
            losses["adversarial_loss"] = weighted(
                self._adv_term.loss(t_view, s_view), -self.adversarial_weight, GENERATOR)
        # The student's terms see the teacher stopped; their gradient w.r.t. the student's
        # weights does not reach the generator (each optimizer takes its own group's total).
        losses.update(term_losses(self.knowledge, stop_gradient(t_view), s_view,
                                  tf.stop_gradient(pseudo)))
        return Step(losses)

    def _evaluate_student(self, x, y, sample_weight):
        """`evaluate` on real (x, y): the student's compiled loss and metrics only."""
        y_pred = self.student(x, training=False)
        losses = {}
        if self._task_loss_fn is not None and y is not None:
            losses["student_loss"] = self.task_loss(y, y_pred, sample_weight)
        return Step(losses, y_pred if y is not None else None)

    # -- serialization: the constructor's arguments, by name (tfkd.training.Trainer) ----
    config_keys = ('teacher', 'student', 'generator', 'latent_dim', 'batch_size', 'knowledge', 'one_hot_weight', 'entropy_weight', 'bn_weight', 'activation_weight', 'activation_layer', 'adversarial_weight', 'input_range', 'generator_width')
    teacher_keys = ('teacher',)


def _bn_inputs(model):
    """[(path of the layer feeding a BN layer, the BN layer)] for every BN layer of `model`."""
    found = []
    for path, layer in _walk(model):
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        producer = _compat.layer_input_producer(layer)
        if producer is None:
            raise ValueError(
                f"DataFree: the teacher's BatchNormalization layer {path!r} is not connected "
                "in a functional graph, so its input cannot be tapped. Use bn_weight=0."
            )
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
