"""Data-free distillation: a generator synthesises the inputs; the student never sees real data.

Two trainers share one base (`_Synthesis`: `fit` without data, the generator's optimizer,
evaluation on real data, the teacher's BatchNorm statistics) and differ in what makes a
generated input useful:

- `DataFree` (classification): the teacher's class posterior (DAFL's confidence and class
  balance, DeepInversion's BatchNorm statistics, DFAD's disagreement);
- `DataFreeSR` (super-resolution, [79]): the teacher's own reconstruction (its SR image,
  downscaled, gives the LR patch back) and the teacher/student disagreement. `DataFree` does
  not fit SR: its generator losses need class logits, an SR teacher outputs images.

Longer than the other schemes: besides the steps it finds the input of every BatchNorm layer
of the teacher (DeepInversion's statistics) and carries DAFL's default generator, so that a
user needs only a teacher and a student.
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
# DataFreeSR's BatchNorm weight for a teacher that has BN layers (measured: see DataFreeSR).
SR_BN_WEIGHT = 30.0


class _Synthesis(Trainer):
    """What a data-free trainer does besides its losses: `fit` without data, a generator with
    its own optimizer, the student's compiled metrics on real validation data, and the
    teacher's BatchNorm statistics (DeepInversion) for a subclass that matches them."""

    extra_optimizers = {GENERATOR: "the generator"}
    group_totals = {GENERATOR: "generator_loss"}

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

    def _evaluate_student(self, x, y, sample_weight):
        """`evaluate` on real (x, y): the student's compiled loss and metrics only."""
        y_pred = self.student(x, training=False)
        losses = {}
        if self._task_loss_fn is not None and y is not None:
            losses["student_loss"] = self.task_loss(y, y_pred, sample_weight)
        return Step(losses, y_pred if y is not None else None)

    def _setup(self, owner, teacher, student, latent_dim, batch_size, input_range,
               generator_width):
        """The constructor arguments every data-free trainer shares."""
        check_pair(owner, student, teacher)
        self.teacher = teacher
        self.freeze(teacher)
        self.student = student
        self.latent_dim = int(latent_dim)
        self.batch_size = int(batch_size)
        self.input_range = (float(input_range[0]), float(input_range[1]))
        self.generator_width = int(generator_width)

    def _build_taps(self, owner, teacher_features=()):
        """Taps of the teacher (the terms' features, the BN inputs, `teacher_features`) and the
        student; builds the terms on their symbolic views and returns the views."""
        self._bn = self._find_bn(self.teacher, owner) if self.bn_weight > 0 else []
        t_feats = [f for t in self.knowledge for f in t.teacher_features]
        t_feats += [path for path, _ in self._bn] + list(teacher_features)
        s_feats = [f for t in self.knowledge for f in t.student_features]
        self._taps = Holder()
        self._taps.teacher = Tap(self.teacher, list(dict.fromkeys(t_feats)), side="teacher")
        self._taps.student = Tap(self.student, list(dict.fromkeys(s_feats)), side="student")
        t_view = self._taps.teacher.symbolic_view()
        s_view = self._taps.student.symbolic_view()
        for term in self.knowledge:
            term.build_term(t_view, s_view)
        return t_view, s_view

    def _set_generator(self, generator, owner, losses):
        """The generator (DAFL's by default), checked; then the trackers of `losses`."""
        if generator is None:
            generator = default_generator(self.latent_dim, self.image_shape, self.input_range,
                                          self.generator_width)
        self._check_generator(generator, owner)
        self.declare(["student_loss", *[f"{t.name}_loss" for t in self.knowledge], *losses])
        self.built = True  # everything is built here; nothing waits for data

    def _synthesise(self):
        """This replica's share of the batch: generated inputs, the teacher's view of them
        (inference mode, inside the tape: the generator's gradient flows through it) and the
        student's (training mode)."""
        z = tf.random.normal((max(1, self.batch_size // replicas()), self.latent_dim))
        x_hat = self.generator(z, training=True)
        return (x_hat, self._taps.teacher(x_hat, training=False),
                self._taps.student(x_hat, training=True))

    def _check_generator(self, generator, owner):
        check_model(generator, "generator", owner)
        g_out = generator.compute_output_spec(keras.KerasTensor((None, self.latent_dim)))
        if tuple(g_out.shape[1:]) != self.image_shape:
            raise ValueError(
                f"{owner}: the generator maps z ({self.latent_dim},) to {tuple(g_out.shape[1:])}"
                f" but the teacher takes {self.image_shape}."
            )
        self.generator = generator

    def _find_bn(self, teacher, owner):
        """[(tap path, BN layer)] of the teacher, or a clear error when it has none."""
        found = _bn_inputs(teacher)
        if not found:
            raise ValueError(
                f"{owner}: bn_weight={self.bn_weight} asks to match the teacher's "
                f"BatchNorm statistics, but the teacher `{teacher.name}` has no "
                "BatchNormalization layer (reached by name, also in nested models). Set "
                "bn_weight=0, or use a teacher with BatchNorm."
            )
        return found

@keras.saving.register_keras_serializable(package="tfkd")
class DataFree(_Synthesis):
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

    def __init__(self, teacher, student, generator=None, latent_dim=100, batch_size=64,
                 knowledge=None, one_hot_weight=1.0, entropy_weight=5.0, bn_weight=1.0,
                 activation_weight=0.0, activation_layer=None, adversarial_weight=0.0,
                 input_range=(0.0, 1.0), generator_width=64, name="data_free", **kwargs):
        super().__init__(name=name, **kwargs)
        owner = "DataFree"
        self._setup(owner, teacher, student, latent_dim, batch_size, input_range,
                    generator_width)
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
        self.knowledge = self.knowledge_terms(knowledge, lambda: [SoftTargets(temperature=1.0)])

        check_same_inputs(owner, [("teacher", teacher), ("student", student)],
                          "Both see the same synthetic images: put a keras.layers.Resizing "
                          "layer at the front of the student.")
        from tfkd.taps import model_input_spec

        t_spec = model_input_spec(teacher, "teacher")
        self.image_shape = tuple(t_spec.shape[1:])

        t_view, s_view = self._build_taps(
            owner, [self.activation_layer] if self.activation_layer else [])
        logits_width(t_view, "teacher", owner)
        if self.adversarial_weight > 0:
            self._adv_term = SoftTargets(temperature=1.0, name="adversarial")
            self._adv_term.build_term(t_view, s_view)
        self._set_generator(generator, owner, ["one_hot_loss", "entropy", "bn_loss",
                                               "activation_loss", "adversarial_loss"])

    # -- the step: the teacher runs inside the tape here (the generator's gradient flows
    # through it), in inference mode; the student learns from it on the same images ---------
    def learn(self, x, y, sample_weight, teaching, training):
        if not training:
            return self._evaluate_student(x, y, sample_weight)
        x_hat, t_view, s_view = self._synthesise()
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

    # -- serialization: the constructor's arguments, by name (tfkd.training.Trainer) ----
    config_keys = ('teacher', 'student', 'generator', 'latent_dim', 'batch_size', 'knowledge', 'one_hot_weight', 'entropy_weight', 'bn_weight', 'activation_weight', 'activation_layer', 'adversarial_weight', 'input_range', 'generator_width')
    teacher_keys = ('teacher',)


@keras.saving.register_keras_serializable(package="tfkd")
class DataFreeSR(_Synthesis):
    """Data-free distillation for super-resolution: a generator of LR patches, no training image.

    Paper: Y. Zhang, H. Chen, X. Chen, Y. Deng, C. Xu, Y. Wang, "Data-Free Knowledge
    Distillation for Image Super-Resolution", CVPR 2021 ([79] of the review).

    Each `train_step` draws `z ~ N(0, I)` (`batch_size` of them, split over replicas),
    synthesises LR patches `x^ = G(z)` of `patch_size` x `patch_size` pixels in
    `input_range`, and runs the teacher (inference mode) and the student once on them. With
    `T = T(x^)`, `S = S(x^)` the SR images (`scale` x larger) and `down_s` the bicubic,
    antialiased downscaling (`tf.image.resize`, as `tfkd.data.super_resolution` makes LR
    inputs):

        L_G = reconstruction_weight * mean |down_s(T) - x^|   (an LR image the teacher explains)
            - adversarial_weight    * mean |T - S|             (where the student is still wrong)
            + bn_weight * sum_BN ||mu - mu_BN||_2 + ||var - var_BN||_2   (DeepInversion)
        L_S = sum_terms weight * term(teacher on x^, student on x^)

    The reconstruction loss is [79]'s prior on the generator: with no class posterior to be
    confident about, an input is "natural" to the teacher when its super-resolved image
    downscales back to it. The student's terms default to `[ReconstructionKD()]` (L1 to the
    teacher's image, [79]'s student loss); terms that take labels get the teacher's image.
    [79]'s progressive distillation (growing the student during training) is not done: tfkd
    students are fixed-architecture Keras models.

    The BatchNorm term (DeepInversion's statistics of the teacher's training data, not part
    of [79]) is what made the patches useful here: measured at x2 on Set5 (FSRCNN student,
    EDSR teacher with one BN layer in its upsampler, 460 steps, `benchmarks/
    super_resolution.py`'s budget) the reconstruction and adversarial losses alone gave
    32.42 dB (flat-noise patches; below bicubic's 33.66), with bn_weight 10 34.54 dB and 30
    35.20 dB (the student trained on T91 alone: 34.60). So `bn_weight=None` means 30 when the
    teacher has BatchNormalization layers and 0 otherwise (an EDSR keeps BN out of its body).
    `fit(epochs=..., steps_per_epoch=...)` takes no data; `validation_data=` real (LR, HR)
    pairs only watch the student through its compiled loss and metrics.

    Metrics: `loss` (student), each term's `<name>_loss`, `generator_loss`,
    `reconstruction_loss`, `adversarial_loss` (the mean |T - S| the generator pushes up),
    `bn_loss`.

    Args:
        teacher: trained SR Keras model (frozen), LR (h, w, C) in, (h*s, w*s, C) out.
        student: the SR Keras model to train; same input channels and scale.
        generator: a Keras model `z (latent_dim,) -> (patch_size, patch_size, C)`, or None for
            DAFL's generator (see `default_generator`) rescaled to `input_range`.
        patch_size: side of the generated LR patches.
        latent_dim, batch_size: size of `z`, synthetic patches per step (global).
        knowledge: the student's terms.
        reconstruction_weight, adversarial_weight, bn_weight: the generator's loss weights
            (bn_weight None: 30 if the teacher has BatchNormalization layers, else 0).
        input_range: (low, high) of the models' input pixels (tfkd's SR models: (0, 255)).
        generator_width: channels of the default generator.

    Example:

    ```python
    import keras, tfkd
    from tfkd.students import super_resolution as sr

    teacher = keras.models.load_model("edsr_x2.keras")        # trained on images you no
    df = tfkd.schemes.DataFreeSR(teacher, sr.fsrcnn(scale=2))   # longer have
    df.compile(optimizer=keras.optimizers.Adam(1e-3),
               generator_optimizer=keras.optimizers.Adam(1e-4),
               loss=keras.losses.MeanAbsoluteError())
    df.fit(epochs=20, steps_per_epoch=100)
    df.student.save("fsrcnn_x2_data_free.keras")
    ```
    """

    def __init__(self, teacher, student, generator=None, patch_size=24, latent_dim=100,
                 batch_size=16, knowledge=None, reconstruction_weight=1.0,
                 adversarial_weight=1.0, bn_weight=None, input_range=(0.0, 255.0),
                 generator_width=64, name="data_free_sr", **kwargs):
        super().__init__(name=name, **kwargs)
        owner = "DataFreeSR"
        self._setup(owner, teacher, student, latent_dim, batch_size, input_range,
                    generator_width)
        self.patch_size = int(patch_size)
        if bn_weight is None:
            bn_weight = SR_BN_WEIGHT if _bn_layers(teacher) else 0.0
        self.set_numbers(owner, reconstruction_weight=reconstruction_weight,
                         adversarial_weight=adversarial_weight, bn_weight=bn_weight)
        from tfkd.knowledge import ReconstructionKD

        self.knowledge = self.knowledge_terms(knowledge, lambda: [ReconstructionKD()])
        check_same_inputs(owner, [("teacher", teacher), ("student", student)],
                          "Both super-resolve the same generated LR patches.")
        from tfkd.taps import model_input_spec

        channels = model_input_spec(teacher, "teacher").shape[-1]
        self.image_shape = (self.patch_size, self.patch_size, channels)
        self.scale = _sr_scale(owner, teacher, student, self.image_shape)
        self._build_taps(owner)
        self._set_generator(generator, owner, ["reconstruction_loss", "adversarial_loss",
                                               "bn_loss"])

    def learn(self, x, y, sample_weight, teaching, training):
        if not training:
            return self._evaluate_student(x, y, sample_weight)
        x_hat, t_view, s_view = self._synthesise()
        t_img = ops.cast(t_view.output(), "float32")
        s_img = ops.cast(s_view.output(), "float32")
        side = (self.patch_size, self.patch_size)
        down = tf.image.resize(t_img, side, method="bicubic", antialias=True)
        losses = {
            "reconstruction_loss": weighted(ops.mean(ops.abs(down - ops.cast(x_hat, "float32"))),
                                            self.reconstruction_weight, GENERATOR),
            # Maximised by the generator (negative weight); the student's own L1 to the
            # teacher is its knowledge term, trained by the main optimizer.
            "adversarial_loss": weighted(ops.mean(ops.abs(t_img - s_img)),
                                         -self.adversarial_weight, GENERATOR),
        }
        if self._bn:
            losses["bn_loss"] = weighted(self._bn_loss(t_view), self.bn_weight, GENERATOR)
        losses.update(term_losses(self.knowledge, stop_gradient(t_view), s_view,
                                  tf.stop_gradient(t_img)))
        return Step(losses)

    config_keys = ('teacher', 'student', 'generator', 'patch_size', 'latent_dim', 'batch_size',
                   'knowledge', 'reconstruction_weight', 'adversarial_weight', 'bn_weight',
                   'input_range', 'generator_width')
    teacher_keys = ('teacher',)


def _sr_scale(owner, teacher, student, image_shape):
    """The common integer scale of two SR models on `image_shape` patches, or an error."""
    scales = {}
    for what, model in (("teacher", teacher), ("student", student)):
        try:
            spec = model.compute_output_spec(keras.KerasTensor((None, *image_shape)))
            shape = tuple(spec.shape[1:])
        except Exception as e:  # a fixed-size model, not an SR one: said below
            shape = f"an error ({type(e).__name__})"
        if not isinstance(shape, tuple) or len(shape) != 3 or shape[-1] != image_shape[-1] or shape[0] % image_shape[0]:
            raise ValueError(
                f"{owner}: the {what} maps a {image_shape} patch to {shape}, not an image "
                f"with the same channels and a whole-number scale. DataFreeSR takes "
                "image-to-image SR models (tfkd.students.super_resolution); for classifiers "
                "use tfkd.schemes.DataFree.")
        scales[what] = shape[0] // image_shape[0]
    if scales["teacher"] != scales["student"]:
        raise ValueError(f"{owner}: the teacher upscales x{scales['teacher']} and the student "
                         f"x{scales['student']}; distil between models of the same scale.")
    return scales["teacher"]


def _bn_layers(model):
    return [layer for _, layer in _walk(model)
            if isinstance(layer, keras.layers.BatchNormalization)]


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
