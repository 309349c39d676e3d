"""`Distiller`: a `keras.Model` whose `train_step` moves a teacher's knowledge into a student."""
import keras
import tensorflow as tf

from tfkd import cached as cached_batches
from tfkd.knowledge import base
from tfkd.taps import Tap
from tfkd.training import MAIN
from tfkd.training import Holder
from tfkd.training import Step
from tfkd.training import Trainer
from tfkd.training import check_callable
from tfkd.training import check_pair
from tfkd.training import deserialize
from tfkd.training import serialize_teacher
from tfkd.training import check_same_inputs
from tfkd.training import stop_gradient
from tfkd.training import term_losses


@keras.saving.register_keras_serializable(package="tfkd")
class Distiller(Trainer):
    """Trains a student on its task loss plus knowledge terms computed against a teacher.

    Each step runs the teacher once (inference mode, no gradient) and the student once, each
    through a tap model that returns the outputs and every intermediate feature a knowledge
    term asked for. The total loss is

        student_loss_weight * task_loss(y, student(x)) + sum(term.weight * term.loss)

    plus the student's own regularisation losses. Each term's loss is reported as a metric
    named `<term.name>_loss`, beside `loss` and `student_loss`.

    Args:
        student: the Keras model to train. `distiller.student` stays a plain Keras model:
            saving it never drags the teacher or the adapters along.
        teacher: a trained Keras model, frozen by the Distiller (its weights never change).
            May be None when every term is teacher-free (`knowledge.TeacherFree`).
        knowledge: list of knowledge terms (`tfkd.knowledge.*`, or `keras.distillation`
            `LogitsDistillation` / `FeatureDistillation` instances).
        student_loss_weight: weight of the compiled task loss; 0 trains on knowledge alone.
        teacher_input / student_input: optional callables (e.g. `keras.layers.Resizing`)
            applied to the batch before it reaches that model, for teachers and students that
            take different resolutions or preprocessing. A layer with weights given as
            `student_input` is trained with the student (a learned front end).
        check_numerics: stop at the first NaN/Inf loss and name the term that produced it.

    Example:

    ```python
    import keras, numpy as np, tfkd

    x = np.random.rand(64, 8, 8, 3).astype("float32")
    y = np.random.randint(0, 4, size=(64,))
    def net(width, name):
        inputs = keras.Input((8, 8, 3))
        h = keras.layers.Conv2D(width, 3, activation="relu", name="feat")(inputs)
        h = keras.layers.GlobalAveragePooling2D()(h)
        return keras.Model(inputs, keras.layers.Dense(4)(h), name=name)

    teacher, student = net(16, "teacher"), net(4, "student")
    distiller = tfkd.Distiller(
        student, teacher,
        knowledge=[tfkd.knowledge.SoftTargets(temperature=4.0),
                   tfkd.knowledge.Hint("feat", "feat")],
    )
    distiller.compile(optimizer="adam",
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
    history = distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)
    sorted(history.history)   # accuracy, hint_loss, loss, soft_targets_loss, student_loss
    ```
    """

    def __init__(
        self,
        student,
        teacher=None,
        knowledge=(),
        student_loss_weight=1.0,
        teacher_input=None,
        student_input=None,
        check_numerics=True,
        name="distiller",
        **kwargs,
    ):
        share_with = kwargs.pop("_share_knowledge_with", None)
        super().__init__(check_numerics=check_numerics, name=name, **kwargs)
        check_pair("Distiller", student, teacher, teacher_optional=True)
        check_callable(teacher_input, "teacher_input", "Distiller")
        check_callable(student_input, "student_input", "Distiller")
        terms = self.knowledge_terms(knowledge, inherit_from=share_with)
        self.student_loss_weight = base.check_non_negative(
            "student_loss_weight", student_loss_weight, "Distiller"
        )
        if not terms and self.student_loss_weight == 0:
            raise ValueError(
                "Nothing to train on: no knowledge terms and student_loss_weight=0. Add terms, "
                "e.g. knowledge=[tfkd.knowledge.SoftTargets()], or a student loss weight > 0."
            )
        needs_teacher = [t.name for t in terms if t.requires_teacher]
        if teacher is None and needs_teacher:
            raise ValueError(
                f"Knowledge terms {needs_teacher} need a teacher, but `teacher` is None. Pass "
                "teacher=<trained keras.Model>, or use teacher-free terms such as "
                "tfkd.knowledge.TeacherFree()."
            )
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.trainable = False  # frozen: no gradients, BatchNorm statistics untouched
        if isinstance(teacher_input, keras.layers.Layer):
            teacher_input.trainable = False  # part of the frozen teacher's side
        self.knowledge = terms
        self.teacher_input = teacher_input
        self.student_input = student_input
        self._build_taps()
        task = ["student_loss"] if self.student_loss_weight > 0 else []
        self.declare(task + [f"{t.name}_loss" for t in terms])
        self.built = True  # taps and adapters exist: callbacks such as BackupAndRestore need it

    # -- construction -------------------------------------------------------------------
    def _build_taps(self):
        """Builds both tap models and every term, so bad input fails before training."""
        s_feats = [f for t in self.knowledge for f in t.student_features]
        t_feats = [f for t in self.knowledge for f in t.teacher_features]
        taps = Holder()
        taps.student = Tap(self.student, s_feats, side="student")
        taps.teacher = None
        if self.teacher is not None:
            taps.teacher = Tap(self.teacher, t_feats, side="teacher")
        self._taps = taps
        student_view = taps.student.symbolic_view()
        teacher_view = taps.teacher.symbolic_view() if taps.teacher else None
        if teacher_view is not None and self.teacher_input is None and self.student_input is None:
            check_same_inputs(
                "Distiller", [("teacher", self.teacher), ("student", self.student)],
                "Pass `teacher_input=` or `student_input=`, e.g. "
                "student_input=keras.layers.Resizing(h, w) for a low-resolution student.")
        for term in self.knowledge:
            term.build_term(teacher_view if term.requires_teacher else None, student_view)
            term.built = True

    # -- what the step runs and compares ----------------------------------------------------
    compiled_task_loss = True  # Keras' compiled loss: dict / list outputs, loss_weights

    def requires_task_loss(self):
        return self.student_loss_weight > 0

    def _missing_loss_message(self):
        return (
            f"compile() got no `loss` but student_loss_weight={self.student_loss_weight}. "
            "Pass the student's task loss, e.g. loss=keras.losses."
            "SparseCategoricalCrossentropy(from_logits=True), or set "
            "student_loss_weight=0 in the Distiller to train on knowledge alone."
        )

    def describe_loss(self, name):
        if name == "student_loss":
            return "student task loss"
        if name == "loss":
            return "total loss"
        return f"knowledge term {name[:-len('_loss')]!r}"

    def optimizer_groups(self):
        # The student, the terms' adapters and a learned `student_input`; never the teacher.
        return {MAIN: [self]}

    def _teaching_modules(self):
        return [m for m in (self.teacher, self.teacher_input) if isinstance(m, keras.layers.Layer)]

    def call(self, inputs, training=False):
        inputs, _ = cached_batches.split(inputs)
        if self.student_input is not None:
            inputs = self.student_input(inputs)
        return self.student(inputs, training=training)

    def run_teacher(self, x):
        """The teacher's `View` of a batch: one inference pass of its tap model, no gradient."""
        t_x = self.teacher_input(x) if self.teacher_input is not None else x
        return stop_gradient(self._taps.teacher(t_x, training=False))

    def teach(self, x, y):
        return self.run_teacher(x) if self._taps.teacher is not None else None

    def teach_from_cache(self, view):
        return view

    def learn(self, x, y, sample_weight, teaching, training):
        s_x = self.student_input(x) if self.student_input is not None else x
        student_view = self._taps.student(s_x, training=training)
        y_pred = student_view.outputs
        losses = self.student_losses(y, y_pred, sample_weight)
        missing = [t.name for t in self.knowledge if t.requires_labels and y is None]
        if missing:
            raise ValueError(
                f"Knowledge terms {missing} need labels, but the batch has none. Feed (x, y) "
                "batches."
            )
        losses.update(term_losses(self.knowledge, teaching, student_view, y, sample_weight,
                                  training=training))
        return Step(losses, y_pred)

    # -- quantization-aware distillation ---------------------------------------------------
    def quantization_aware(self, calibration_data=None, optimizer=None, **quantize_kwargs):
        """Returns a Distiller whose student is quantization-aware, with the same knowledge.

        The float teacher keeps guiding the int8 student (quantized distillation). The new
        distiller shares the teacher, the knowledge terms and their trained adapters, and is
        compiled like this one (same loss and metrics, a fresh optimizer of the same
        configuration unless `optimizer` is given), so it is ready for `fit`. (Keras' own
        `Model.quantize` — post-training int8/int4 weights — is left alone.)

        Args:
            calibration_data: batches (x or (x, y)) used to initialise the activation ranges
                of the quantization-aware student; see `tfkd.quantization.quantize_model`.
            optimizer: optimizer for the QAT phase (e.g. a lower learning rate).
            **quantize_kwargs: passed to `tfkd.quantization.quantize_model`.

        Example:

        ```python
        qat = distiller.quantization_aware(calibration_data=train_ds.take(8))
        qat.fit(train_ds, epochs=3)
        tfkd.tflite.convert(qat.student, "student_int8.tflite", quantization="qat")
        ```
        """
        from tfkd import quantization

        if calibration_data is not None and self.student_input is not None:
            calibration_data = _map_inputs(calibration_data, self.student_input)
        student = quantization.quantize_model(
            self.student, calibration_data=calibration_data, **quantize_kwargs
        )
        qat = type(self)(
            student,
            self.teacher,
            knowledge=self.knowledge,
            student_loss_weight=self.student_loss_weight,
            teacher_input=self.teacher_input,
            student_input=self.student_input,
            check_numerics=self.check_numerics,
            name=f"{self.name}_qat",
            _share_knowledge_with=self,
        )
        if self.compiled:
            # A fresh optimizer of the same configuration: QAT starts with clean slots.
            config = {k: deserialize(v) for k, v in self.get_compile_config().items()}
            if optimizer is not None:
                config["optimizer"] = optimizer
            qat.compile(**config)
        elif optimizer is not None:
            qat.compile(optimizer=optimizer)
        return qat

    # -- serialization ------------------------------------------------------------------------
    def get_config(self):
        ser = keras.saving.serialize_keras_object
        return {
            "name": self.name,
            "student": ser(self.student),
            # The teacher's own compile state (its user's optimizer) is not the Distiller's.
            "teacher": serialize_teacher(self.teacher),
            "knowledge": [ser(t) for t in self.knowledge],
            "student_loss_weight": self.student_loss_weight,
            "teacher_input": ser(self.teacher_input) if self.teacher_input is not None else None,
            "student_input": ser(self.student_input) if self.student_input is not None else None,
            "check_numerics": self.check_numerics,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        de = lambda c: keras.saving.deserialize_keras_object(c, custom_objects=custom_objects)
        for key in ("student", "teacher", "teacher_input", "student_input"):
            if config.get(key) is not None:
                config[key] = de(config[key])
        config["knowledge"] = [de(t) for t in config.get("knowledge", [])]
        return cls(**config)


def _map_inputs(data, fn):
    """Applies `fn` to the x part of numpy / tf.data calibration batches."""
    if isinstance(data, tf.data.Dataset):
        def apply(*batch):
            if len(batch) == 1:
                return fn(batch[0])
            return (fn(batch[0]),) + tuple(batch[1:])
        return data.map(apply)
    if isinstance(data, (tuple, list)):
        return (fn(data[0]),) + tuple(data[1:])
    return fn(data)
