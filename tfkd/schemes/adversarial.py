"""Adversarial distillation: a discriminator tells teacher from student; the student fools it."""
import keras
import tensorflow as tf
from keras import ops
from keras.src.trainers.data_adapters import data_adapter_utils

from tfkd.knowledge import SoftTargets
from tfkd.knowledge import as_knowledge
from tfkd import steps
from tfkd.schemes import _common as c
from tfkd.taps import model_input_spec


@keras.saving.register_keras_serializable(package="tfkd")
class AdversarialDistillation(c.SchemeModel):
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

    extra_optimizers = ("discriminator_optimizer",)
    extra_optimizer_roles = {"discriminator_optimizer": "the discriminator"}

    def __init__(self, student, teacher, knowledge=None, discriminator=None, features=None,
                 adversarial_weight=0.1, student_loss_weight=1.0, teacher_input=None,
                 student_input=None, name="adversarial_distillation", **kwargs):
        super().__init__(name=name, **kwargs)
        owner = "AdversarialDistillation"
        c.check_model(student, "student", owner)
        c.check_model(teacher, "teacher", owner)
        if teacher is student:
            raise ValueError(f"{owner}: teacher and student are the same model.")
        if knowledge is None:
            knowledge = [SoftTargets(temperature=4.0)]
        if not isinstance(knowledge, (list, tuple)):
            knowledge = [knowledge]
        self.knowledge = [as_knowledge(k) for k in knowledge]
        c.unique_names(self.knowledge)
        if features is not None:
            if (not isinstance(features, (list, tuple)) or len(features) != 2
                    or not all(isinstance(f, str) for f in features)):
                raise ValueError(
                    f"{owner}: `features` must be None (discriminate logits) or a "
                    f"(student_layer, teacher_layer) pair of layer names; got {features!r}."
                )
            features = tuple(features)
        self.features = features
        self.adversarial_weight = float(adversarial_weight)
        self.student_loss_weight = float(student_loss_weight)
        self.student = student
        self.teacher = teacher
        teacher.trainable = False
        self.teacher_input = teacher_input
        self.student_input = student_input

        s_feats = [f for t in self.knowledge for f in t.student_features]
        t_feats = [f for t in self.knowledge for f in t.teacher_features]
        if features is not None:
            s_feats.append(features[0])
            t_feats.append(features[1])
        self._taps = c.holder()
        self._taps.student = c.make_tap(student, s_feats, "student")
        self._taps.teacher = c.make_tap(teacher, t_feats, "teacher")
        s_view = self._taps.student.symbolic_view()
        t_view = self._taps.teacher.symbolic_view()
        if teacher_input is None and student_input is None:
            s_in = model_input_spec(student, "student").shape[1:]
            t_in = model_input_spec(teacher, "teacher").shape[1:]
            if tuple(s_in) != tuple(t_in):
                raise ValueError(
                    f"{owner}: the teacher takes inputs of shape {tuple(t_in)} and the student "
                    f"{tuple(s_in)}; pass teacher_input= or student_input= (e.g. "
                    "keras.layers.Resizing)."
                )
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
        c.check_model(discriminator, "discriminator", owner)
        if not discriminator.built:
            discriminator.build((None, width))
        out = discriminator.compute_output_spec(keras.KerasTensor((None, width)))
        if tuple(out.shape[1:]) not in ((1,), ()):
            raise ValueError(
                f"{owner}: the discriminator must map a (batch, {width}) input to one logit "
                f"per sample, shape (batch, 1); it returns {tuple(out.shape)}."
            )
        self.discriminator = discriminator
        self.total_tracker = keras.metrics.Mean(name="loss")
        self.student_tracker = keras.metrics.Mean(name="student_loss")
        self.term_trackers = [keras.metrics.Mean(name=f"{t.name}_loss") for t in self.knowledge]
        self.adv_tracker = keras.metrics.Mean(name="adversarial_loss")
        self.d_tracker = keras.metrics.Mean(name="discriminator_loss")
        self.d_acc_tracker = keras.metrics.Mean(name="discriminator_accuracy")
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

    def _trackers(self):
        return [self.total_tracker, self.student_tracker, *self.term_trackers, self.adv_tracker,
                self.d_tracker, self.d_acc_tracker]

    def _main_variables(self):
        d_ids = {id(v) for v in self.discriminator.trainable_variables}
        return [v for v in c.dedupe(self.trainable_variables) if id(v) not in d_ids]

    def _extra_variables(self):
        return {"discriminator_optimizer": c.dedupe(self.discriminator.trainable_variables)}

    # -- steps -----------------------------------------------------------------------------
    def _forward(self, x, y, sample_weight, training):
        t_x = self.teacher_input(x) if self.teacher_input is not None else x
        t_view = c.stop(self._taps.teacher(t_x, training=False))
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
        d_loss = c.reduce_batch(ops.softplus(-d_t) + ops.softplus(d_s), sample_weight)
        adv = c.reduce_batch(ops.softplus(-d_s), sample_weight)
        d_acc = 0.5 * (ops.mean(ops.cast(d_t > 0, "float32"))
                       + ops.mean(ops.cast(d_s <= 0, "float32")))

        task = ops.zeros((), "float32")
        total = self.adversarial_weight * c.scale(adv)
        if self.student_loss_weight > 0:
            if y is None:
                raise ValueError("AdversarialDistillation: the batch has no labels but "
                                 "student_loss_weight > 0; feed (x, y) or set it to 0.")
            task = ops.cast(self.task_loss(y, s_view.output(), sample_weight), "float32")
            total = total + self.student_loss_weight * task
        knowledge, terms = steps.knowledge_losses(self.knowledge, t_view, s_view, y,
                                                  sample_weight)
        total = total + knowledge + steps.regularization_loss(self.student, self.knowledge)
        d_total = c.scale(d_loss)
        d_reg = [ops.cast(l, "float32") for l in self.discriminator.losses]
        if d_reg:
            d_total = d_total + c.scale(ops.sum(ops.stack(d_reg)))
        return total, task, terms, adv, d_total, d_loss, d_acc, s_view.outputs

    def _update(self, out, x, y, sample_weight):
        total, task, terms, adv, _, d_loss, d_acc, y_pred = out
        self._track(self.total_tracker, total, x, per_replica_scaled=True)
        self._track(self.student_tracker, task, x, per_replica_scaled=True)
        for tr, v in zip(self.term_trackers, terms):
            self._track(tr, v, x)
        self._track(self.adv_tracker, adv, x)
        self._track(self.d_tracker, d_loss, x)
        self._track(self.d_acc_tracker, d_acc, x)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def train_step(self, data):
        x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape(persistent=True) as tape:
            out = self._forward(x, y, sample_weight, True)
            s_scaled = self.optimizer.scale_loss(out[0])
            d_scaled = self.discriminator_optimizer.scale_loss(out[4])
        s_vars = self._main_variables()
        d_vars = self._extra_variables()["discriminator_optimizer"]
        s_grads = tape.gradient(s_scaled, s_vars)
        d_grads = tape.gradient(d_scaled, d_vars)
        del tape
        self.optimizer.apply_gradients(zip(s_grads, s_vars))
        self.discriminator_optimizer.apply_gradients(zip(d_grads, d_vars))
        return self._update(out, x, y, sample_weight)

    # -- serialization ---------------------------------------------------------------------
    def get_config(self):
        opt = lambda v: None if v is None else c.ser(v)  # noqa: E731
        return {
            "name": self.name,
            "student": c.ser(self.student),
            "teacher": c.ser(self.teacher),
            "knowledge": [c.ser(t) for t in self.knowledge],
            "discriminator": c.ser(self.discriminator),
            "features": list(self.features) if self.features else None,
            "adversarial_weight": self.adversarial_weight,
            "student_loss_weight": self.student_loss_weight,
            "teacher_input": opt(self.teacher_input),
            "student_input": opt(self.student_input),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        de = lambda v: c.de(v, custom_objects)  # noqa: E731
        for key in ("student", "teacher", "discriminator", "teacher_input", "student_input"):
            config[key] = de(config.get(key))
        config["knowledge"] = [de(t) for t in config.get("knowledge", [])]
        return cls(**config)


def _pool(x):
    if len(x.shape) == 4:
        return ops.mean(x, axis=(1, 2))
    if len(x.shape) == 3:
        return ops.mean(x, axis=1)
    return x
