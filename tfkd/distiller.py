"""`Distiller`: a `keras.Model` whose `train_step` moves a teacher's knowledge into a student."""
import contextlib
import re

import keras
import tensorflow as tf
from keras import ops
from keras.src.trainers import compile_utils
from keras.src.trainers.data_adapters import data_adapter_utils

from tfkd import steps
from tfkd.knowledge import base
from tfkd.knowledge import as_knowledge
from tfkd.taps import Tap, model_input_spec


@keras.saving.register_keras_serializable(package="tfkd")
class Distiller(keras.Model):
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
        super().__init__(name=name, **kwargs)
        # Keras 3.15's Layer.__new__ replaces `quantize` on every instance with a wrapper for
        # its own int8/int4 post-training modes, which would shadow Distiller.quantize.
        self.__dict__.pop("quantize", None)
        if not isinstance(student, keras.Model):
            raise TypeError(
                f"`student` must be a keras.Model, got {type(student).__name__}. Wrap layers "
                "in keras.Model(inputs, outputs) or keras.Sequential first."
            )
        if teacher is not None and not isinstance(teacher, keras.Model):
            raise TypeError(f"`teacher` must be a keras.Model or None, got {type(teacher).__name__}.")
        if teacher is student:
            raise ValueError("`teacher` and `student` are the same model; pass two models.")
        if isinstance(knowledge, (base.Knowledge,)) or not isinstance(knowledge, (list, tuple)):
            knowledge = [knowledge]
        terms = [as_knowledge(k) for k in knowledge]
        self.student_loss_weight = base.check_non_negative(
            "student_loss_weight", student_loss_weight, "Distiller"
        )
        if not terms and self.student_loss_weight == 0:
            raise ValueError(
                "Nothing to train on: no knowledge terms and student_loss_weight=0. Add terms, "
                "e.g. knowledge=[tfkd.knowledge.SoftTargets()], or a student loss weight > 0."
            )
        steps.unique_names(terms)
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
        self.check_numerics = bool(check_numerics)
        self._build_taps()
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.total_loss_tracker = keras.metrics.Mean(name="loss")
        self.term_trackers = [keras.metrics.Mean(name=f"{t.name}_loss") for t in terms]
        trackers = [self.student_loss_tracker] if self.student_loss_weight > 0 else []
        self._loss_metrics = _LossMetrics(trackers + self.term_trackers)
        self.built = True  # taps and adapters exist: callbacks such as BackupAndRestore need it

    # -- construction -------------------------------------------------------------------
    def _build_taps(self):
        """Builds both tap models and every term, so bad input fails before training."""
        s_feats = [f for t in self.knowledge for f in t.student_features]
        t_feats = [f for t in self.knowledge for f in t.teacher_features]
        taps = _Taps()
        taps.student = Tap(self.student, s_feats, side="student")
        taps.teacher = None
        if self.teacher is not None:
            taps.teacher = Tap(self.teacher, t_feats, side="teacher")
        self._taps = taps
        student_view = taps.student.symbolic_view()
        teacher_view = taps.teacher.symbolic_view() if taps.teacher else None
        if teacher_view is not None:
            self._check_inputs()
        for term in self.knowledge:
            term.build_term(teacher_view if term.requires_teacher else None, student_view)
            term.built = True

    def _check_inputs(self):
        t_spec = model_input_spec(self.teacher, "teacher")
        s_spec = model_input_spec(self.student, "student")
        if self.teacher_input is not None or self.student_input is not None:
            return
        t_shapes = [tuple(t.shape[1:]) for t in keras.tree.flatten(t_spec)]
        s_shapes = [tuple(s.shape[1:]) for s in keras.tree.flatten(s_spec)]

        def compatible(a, b):  # None (a dynamic size) matches anything
            return len(a) == len(b) and all(i is None or j is None or i == j
                                            for i, j in zip(a, b))

        if len(t_shapes) != len(s_shapes) or not all(map(compatible, t_shapes, s_shapes)):
            raise ValueError(
                f"The teacher takes inputs of shape {t_shapes} and the student {s_shapes}, and "
                "no input adapter was given. Pass `teacher_input=` or `student_input=`, e.g. "
                "student_input=keras.layers.Resizing(h, w) for a low-resolution student."
            )

    def build(self, input_shape=None):
        # Everything is built in __init__ (taps, adapters); Keras' loader calls this.
        self.built = True

    # -- Keras API ------------------------------------------------------------------------
    def compile(self, optimizer="adam", loss=None, metrics=None, **kwargs):
        if loss is None and self.student_loss_weight > 0:
            raise ValueError(
                f"compile() got no `loss` but student_loss_weight={self.student_loss_weight}. "
                "Pass the student's task loss, e.g. loss=keras.losses."
                "SparseCategoricalCrossentropy(from_logits=True), or set "
                "student_loss_weight=0 in the Distiller to train on knowledge alone."
            )
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def compile_from_config(self, config):
        # Keras skips models with a custom compile(); ours only validates, so restore it.
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.optimizer is not None:
            self.optimizer.build(self._trained_variables())

    def call(self, inputs, training=False):
        inputs, _ = _split_cached(inputs)
        if self.student_input is not None:
            inputs = self.student_input(inputs)
        return self.student(inputs, training=training)

    @property
    def metrics(self):
        tracked = [self.total_loss_tracker, self._loss_metrics]
        if self._compile_metrics is not None:
            tracked.append(self._compile_metrics)
        return tracked

    def run_teacher(self, x):
        """The teacher's `View` of a batch: one inference pass of its tap model, no gradient."""
        t_x = self.teacher_input(x) if self.teacher_input is not None else x
        return steps.stop_gradient_view(self._taps.teacher(t_x, training=False))

    def _forward(self, x, y, sample_weight, training, teacher_view=None):
        """One teacher pass (none when `teacher_view` was cached) and one student pass.

        Returns (total loss, task loss, term losses, y_pred).
        """
        if teacher_view is None and self._taps.teacher is not None:
            teacher_view = self.run_teacher(x)
        s_x = self.student_input(x) if self.student_input is not None else x
        student_view = self._taps.student(s_x, training=training)
        y_pred = student_view.outputs

        total = ops.zeros((), "float32")
        task = ops.zeros((), "float32")
        if self.student_loss_weight > 0:
            if y is None:
                raise ValueError(
                    "The batch has no labels but student_loss_weight > 0. Feed (x, y) "
                    "batches, or set student_loss_weight=0 to train on knowledge alone."
                )
            # keras.losses.Loss already scales the compiled loss for the replicas.
            task = ops.cast(self._compile_loss(y, y_pred, sample_weight), "float32")
            total = total + self.student_loss_weight * task
        missing = [t.name for t in self.knowledge if t.requires_labels and y is None]
        if missing:
            raise ValueError(
                f"Knowledge terms {missing} need labels, but the batch has none. Feed (x, y) "
                "batches."
            )
        knowledge, term_losses = steps.knowledge_losses(
            self.knowledge, teacher_view, student_view, y, sample_weight
        )
        total = total + knowledge + steps.regularization_loss(self.student, self.knowledge)
        if self.check_numerics:
            named = [(t.name, v) for t, v in zip(self.knowledge, term_losses)]
            if self.student_loss_weight > 0:
                named.insert(0, ("student_loss", task))
            total = _assert_finite(total, named, self.optimizer)
        return total, task, term_losses, y_pred

    def _update_trackers(self, total, task, term_losses, x):
        batch = ops.shape(keras.tree.flatten(x)[0])[0]
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        self.total_loss_tracker.update_state(total * replicas, sample_weight=batch)
        if self.student_loss_weight > 0:
            self.student_loss_tracker.update_state(task * replicas, sample_weight=batch)
        for tracker, value in zip(self.term_trackers, term_losses):
            tracker.update_state(value, sample_weight=batch)

    def train_step(self, data):
        x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(data)
        x, teacher_view = _split_cached(x)
        if teacher_view is None and self._taps.teacher is not None:
            # Outside the tape: the tape would otherwise record every teacher op and keep its
            # activations alive until the gradient is taken.
            teacher_view = self.run_teacher(x)
        with tf.GradientTape() as tape:
            total, task, term_losses, y_pred = self._forward(
                x, y, sample_weight, True, teacher_view
            )
            scaled = self.optimizer.scale_loss(total)
        variables = self._trained_variables()
        gradients = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        self._update_trackers(total, task, term_losses, x)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def test_step(self, data):
        x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(data)
        x, cached = _split_cached(x)
        total, task, term_losses, y_pred = self._forward(x, y, sample_weight, False, cached)
        self._update_trackers(total, task, term_losses, x)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _trained_variables(self):
        return steps.unique_variables(self.trainable_variables)

    def _refuse_multi_worker(self, method, alternative):
        strategies = (tf.distribute.get_strategy(), self.distribute_strategy)
        if any(isinstance(s, tf.distribute.MultiWorkerMirroredStrategy) for s in strategies):
            raise RuntimeError(
                f"Keras 3's `{method}` cannot run under MultiWorkerMirroredStrategy "
                f"(keras-team/keras#20585). Use `{alternative}(distiller, dataset, ...)`, which "
                "drives `strategy.run(distiller.train_step / test_step)` itself."
            )

    def fit(self, *args, **kwargs):
        self._refuse_multi_worker("fit", "tfkd.distribute.fit_multi_worker")
        with _raise_if_nonfinite():
            return super().fit(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        self._refuse_multi_worker("evaluate", "tfkd.distribute.evaluate_multi_worker")
        with _raise_if_nonfinite():
            return super().evaluate(*args, **kwargs)

    # -- quantization-aware distillation ---------------------------------------------------
    def quantize(self, calibration_data=None, optimizer=None, **quantize_kwargs):
        """Returns a Distiller whose student is quantization-aware, with the same knowledge.

        The float teacher keeps guiding the int8 student (quantized distillation). The new
        distiller shares the teacher, the knowledge terms and their trained adapters, and is
        compiled like this one (same loss and metrics, a fresh optimizer of the same
        configuration unless `optimizer` is given), so it is ready for `fit`.

        Args:
            calibration_data: batches (x or (x, y)) used to initialise the activation ranges
                of the quantization-aware student; see `tfkd.quantization.quantize_model`.
            optimizer: optimizer for the QAT phase (e.g. a lower learning rate).
            **quantize_kwargs: passed to `tfkd.quantization.quantize_model`.

        Example:

        ```python
        qat = distiller.quantize(calibration_data=train_ds.take(8))
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
        )
        if self.compiled:
            # A fresh optimizer of the same configuration: QAT starts with clean slots.
            config = keras.saving.deserialize_keras_object(self.get_compile_config())
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
            "teacher": ser(self.teacher) if self.teacher is not None else None,
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


# Keys of a batch whose teacher outputs were computed once by `tfkd.data.cache_teacher`:
# x = {"inputs": student inputs, "teacher": {"outputs": ..., "features": {name: ...}}}.
CACHED_INPUTS = "inputs"
CACHED_TEACHER = "teacher"


def _split_cached(x):
    """(inputs, cached teacher View) for a cached batch; (x, None) for any other batch."""
    if isinstance(x, dict) and set(x) == {CACHED_INPUTS, CACHED_TEACHER}:
        cached = x[CACHED_TEACHER]
        return x[CACHED_INPUTS], base.View(cached["outputs"], cached.get("features"))
    return x, None


class _LossMetrics(compile_utils.MetricsList):
    """The per-term loss trackers, grouped where Keras' callbacks look for a metric's
    direction: ModelCheckpoint / EarlyStopping on `val_hint_loss` then know lower is better."""

    def __init__(self, trackers):
        super().__init__(trackers, name="distillation_losses")
        for tracker in trackers:
            tracker._direction = "down"

    def result(self):
        return {m.name: m.result() for m in self.metrics}


class _Taps:
    """Holds the tap models out of Keras' tracking: they share every weight with the models."""

    student = None
    teacher = None


_NAN_MARK = "tfkd-nonfinite-loss"
_NAN_STEP = re.compile(_NAN_MARK + r"\] \[(-?\d+)\]")
_NAN_PARTS = re.compile(r"\[(\S+)=\] \[([^\]]*)\]")


def _assert_finite(total, named_losses, optimizer):
    # One in-graph check on the total (one Assert per term cost ~20% of a step on CPU); its
    # message carries the step and every part, so `_raise_if_nonfinite` can name the culprit.
    # (XLA drops Assert ops: under jit_compile=True a NaN is not stopped here.)
    step = optimizer.iterations if optimizer is not None else tf.constant(-1, "int64")
    data = [_NAN_MARK, step]
    for name, value in named_losses:
        data += [f"{name}=", value]
    check = tf.debugging.Assert(tf.math.is_finite(total), data, summarize=1)
    with tf.control_dependencies([check]):
        return tf.identity(total)


@contextlib.contextmanager
def _raise_if_nonfinite():
    try:
        yield
    except tf.errors.InvalidArgumentError as error:
        message = str(error)
        step = _NAN_STEP.search(message)
        if not step:
            raise
        bad = [name for name, value in _NAN_PARTS.findall(message)
               if "nan" in value.lower() or "inf" in value.lower()]
        what = ", ".join("student task loss" if name == "student_loss"
                         else f"knowledge term {name!r}" for name in bad) or "total loss"
        raise FloatingPointError(
            f"The {what} produced a NaN/Inf loss at optimizer step "
            f"{step.group(1)}; training stopped. Lower the learning rate or this term's weight, "
            "check the inputs for NaN/Inf, or check that the teacher's outputs are finite "
            "(teacher.predict on a batch)."        ) from None
