"""Adversarial distillation: a discriminator tells teacher from student; the student fools it."""
import keras
from keras import ops

from tfkd.knowledge import SoftTargets
from tfkd.taps import Tap
from tfkd.training import MAIN
from tfkd.training import Holder
from tfkd.training import Step
from tfkd.training import Trainer
from tfkd.training import check_callable
from tfkd.training import check_model
from tfkd.training import check_pair
from tfkd.training import check_same_inputs
from tfkd.training import reduce_batch
from tfkd.training import term_losses
from tfkd.training import weighted

DISCRIMINATOR = "discriminator_optimizer"


@keras.saving.register_keras_serializable(package="tfkd")
class AdversarialDistillation(Trainer):
    """Knowledge terms plus a GAN game between the student and a teacher/student discriminator.

    Papers: Z. Xu, Y.-C. Hsu, J. Huang, "Training Shallow and Thin Networks for Acceleration
    via Knowledge Distillation with Conditional Adversarial Networks", ICLR 2018 Workshop
    (arXiv:1709.00513); V. Belagiannis, A. Farshad, F. Galasso, "Adversarial Network
    Compression", ECCV 2018 Workshops (discriminator on features).

    One `train_step`, two optimizers. The discriminator `D` sees the teacher's (label 1) and
    the student's (label 0) representation of the same batch: the logits by default, or, with
    `features=(student_layer, teacher_layer)`, those layers globally average-pooled (the
    student's through a learned Dense adapter when the widths differ). With `d = D(.)` a
    logit and `softplus(-d) = -log sigmoid(d)`:

        L_D = mean_i softplus(-D(t_i)) + softplus(D(s_i))              (optimizer of D)
        L_S = student_loss_weight * task(y, z_s) + sum_terms weight * term
              + adversarial_weight * mean_i softplus(-D(s_i))          (student's optimizer)

    The student's non-saturating adversarial loss asks D to call it "teacher". The knowledge
    terms (default `[SoftTargets(temperature=4.0)]`) come from `tfkd.knowledge`. Both losses
    come from the same forward pass of each model; each optimizer only updates its own
    network (the gradient of L_D is taken w.r.t. D's weights only).

    `compile(optimizer=..., discriminator_optimizer=..., loss=..., metrics=...)`, or
    `optimizer=[student_opt, discriminator_opt]`. Metrics: `loss`, `student_loss`, each term's
    `<name>_loss`, `adversarial_loss`, `discriminator_loss`, `discriminator_accuracy`, and the
    compiled metrics of the student. `adv.student` is the plain student model.

    Args:
        student, teacher: Keras models (the teacher is frozen).
        knowledge: knowledge terms, as for `tfkd.Distiller`.
        discriminator: a Keras model mapping a (batch, width) vector to one logit, or None for
            the default MLP (Dense 64 - LeakyReLU - Dense 64 - LeakyReLU - Dense 1).
        features: None (discriminate logits) or (student_layer, teacher_layer).
        adversarial_weight: weight of the student's adversarial loss.
        student_loss_weight: weight of the task loss.
        teacher_input, student_input: optional input adapters, as for `tfkd.Distiller`.
    """

    extra_optimizers = {DISCRIMINATOR: "the discriminator"}

    def __init__(self, student, teacher, knowledge=None, discriminator=None, features=None,
                 adversarial_weight=0.1, student_loss_weight=1.0, teacher_input=None,
                 student_input=None, name="adversarial_distillation", **kwargs):
        super().__init__(name=name, **kwargs)
        owner = "AdversarialDistillation"
        check_pair(owner, student, teacher)
        self.knowledge = self.knowledge_terms(knowledge, lambda: [SoftTargets(temperature=4.0)])
        check_callable(teacher_input, "teacher_input", owner)
        check_callable(student_input, "student_input", owner)
        if features is not None:
            if (not isinstance(features, (list, tuple)) or len(features) != 2
                    or not all(isinstance(f, str) for f in features)):
                raise ValueError(
                    f"{owner}: `features` must be None (discriminate logits) or a "
                    f"(student_layer, teacher_layer) pair of layer names; got {features!r}."
                )
            features = tuple(features)
        self.features = features
        self.set_numbers(owner, adversarial_weight=adversarial_weight,
                         student_loss_weight=student_loss_weight)
        self.student = student
        self.teacher = teacher
        self.freeze(teacher)
        self.teacher_input = teacher_input
        self.student_input = student_input

        s_feats = [f for t in self.knowledge for f in t.student_features]
        t_feats = [f for t in self.knowledge for f in t.teacher_features]
        if features is not None:
            s_feats.append(features[0])
            t_feats.append(features[1])
        self._taps = Holder()
        self._taps.student = Tap(student, list(dict.fromkeys(s_feats)), side="student")
        self._taps.teacher = Tap(teacher, list(dict.fromkeys(t_feats)), side="teacher")
        s_view = self._taps.student.symbolic_view()
        t_view = self._taps.teacher.symbolic_view()
        if teacher_input is None and student_input is None:
            check_same_inputs(owner, [("teacher", teacher), ("student", student)],
                              "Pass teacher_input= or student_input= (e.g. "
                              "keras.layers.Resizing).")
        for term in self.knowledge:
            term.build_term(t_view, s_view)
        s_rep, t_rep = self._representations(s_view, t_view)
        width = t_rep.shape[-1]
        self.adapter = None
        if s_rep.shape[-1] != width:
            self.adapter = keras.layers.Dense(width, name="discriminator_adapter")
            self.adapter.build(tuple(s_rep.shape))
        if discriminator is None:
            discriminator = keras.Sequential([
                keras.Input((width,)),
                keras.layers.Dense(64),
                keras.layers.LeakyReLU(0.2),
                keras.layers.Dense(64),
                keras.layers.LeakyReLU(0.2),
                keras.layers.Dense(1),
            ], name="discriminator")
        check_model(discriminator, "discriminator", owner)
        if not discriminator.built:
            discriminator.build((None, width))
        out = discriminator.compute_output_spec(keras.KerasTensor((None, width)))
        if tuple(out.shape[1:]) not in ((1,), ()):
            raise ValueError(
                f"{owner}: the discriminator must map a (batch, {width}) input to one logit "
                f"per sample, shape (batch, 1); it returns {tuple(out.shape)}."
            )
        self.discriminator = discriminator
        self.declare(["student_loss", *[f"{t.name}_loss" for t in self.knowledge],
                      "adversarial_loss", "discriminator_loss"],
                     stats=["discriminator_accuracy"])
        self.built = True  # everything is built here; nothing waits for data

    def _representations(self, s_view, t_view):
        if self.features is None:
            return s_view.output(), t_view.output()
        return _pool(s_view.features[self.features[0]]), _pool(t_view.features[self.features[1]])

    # -- API -------------------------------------------------------------------------------
    def call(self, inputs, training=False):
        if self.student_input is not None:
            inputs = self.student_input(inputs)
        return self.student(inputs, training=training)

    def optimizer_groups(self):
        inputs = [self.student_input] if isinstance(self.student_input, keras.layers.Layer) else []
        adapter = [self.adapter] if self.adapter is not None else []
        return {MAIN: [self.student, *inputs, *adapter, *self.knowledge],
                DISCRIMINATOR: [self.discriminator]}

    def _teaching_modules(self):
        return [self.teacher]

    def requires_task_loss(self):
        return self.student_loss_weight > 0

    # -- the step: teacher outside the tape; student and discriminator, each its optimizer --
    def teach(self, x, y):
        t_x = self.teacher_input(x) if self.teacher_input is not None else x
        return self._taps.teacher(t_x, training=False)

    def learn(self, x, y, sample_weight, teaching, training):
        t_view = teaching
        s_x = self.student_input(x) if self.student_input is not None else x
        s_view = self._taps.student(s_x, training=training)
        s_rep, t_rep = self._representations(s_view, t_view)
        s_rep = ops.cast(s_rep, "float32")
        if self.adapter is not None:
            s_rep = self.adapter(s_rep)
        t_rep = ops.cast(t_rep, "float32")
        batch = ops.shape(s_rep)[0]
        d_out = ops.reshape(self.discriminator(ops.concatenate([t_rep, s_rep], axis=0),
                                               training=training), (-1,))
        d_t, d_s = d_out[:batch], d_out[batch:]
        # The discriminator's loss trains only its own optimizer's variables, the adversarial
        # loss only the student's: each optimizer takes the gradient of its own group's total.
        losses = {
            "discriminator_loss": weighted(
                reduce_batch(ops.softplus(-d_t) + ops.softplus(d_s), sample_weight),
                optimizer=DISCRIMINATOR),
            "adversarial_loss": weighted(reduce_batch(ops.softplus(-d_s), sample_weight),
                                         self.adversarial_weight),
        }
        losses.update(self.student_losses(y, s_view.output(), sample_weight))
        losses.update(term_losses(self.knowledge, t_view, s_view, y, sample_weight))
        d_acc = 0.5 * (ops.mean(ops.cast(d_t > 0, "float32"))
                       + ops.mean(ops.cast(d_s <= 0, "float32")))
        return Step(losses, s_view.outputs, {"discriminator_accuracy": d_acc})

    # -- serialization: the constructor's arguments, by name (tfkd.training.Trainer) ----
    config_keys = ('student', 'teacher', 'knowledge', 'discriminator', 'features', 'adversarial_weight', 'student_loss_weight', 'teacher_input', 'student_input')
    teacher_keys = ('teacher',)


def _pool(x):
    if len(x.shape) == 4:
        return ops.mean(x, axis=(1, 2))
    if len(x.shape) == 3:
        return ops.mean(x, axis=1)
    return x
