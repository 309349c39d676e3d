"""`Task`: everything that differs between vision tasks, for the one flow of `recipes.flow`.

A recipe is a `Task` plus flag defaults. `recipes.flow.run(config, task)` calls the task's
methods in this order:

    check_config(config)                 flag values this task cannot use (zoo names, ...)
    knowledge(config)                    the knowledge terms (built before any data is read)
    load(config) -> Splits               the data, cut to --max_train / --max_test
    check(splits)                        labels of the right form for the task
    prepare(splits)                      state that depends on the data (class weights, the
                                         student's input size); called once
    adapt_knowledge(terms, splits)       the terms, completed with what only the data says
                                         (the ignore label of segmentation masks)
    build_teacher(config, splits, bn_momentum) / check_teacher(teacher, splits)
    student_input()                      a layer from the data to what the student sees
    variants(config)                     more distilled students, each with its own input layer
    build_student(config, splits, input_shape, bn_momentum)
    loss() / metrics()                   compiled into every model trained here
    sample_weights(y)                    per-sample weights of the task loss, or None
    dataset(x, y, weights, batch_size, augment, seed)   the training pipeline
    predict(model, x)                    a Keras model's outputs (default: batched predict)
    reference_outputs(x)                 rows that need no model (bicubic), default none
    scores(y_true, outputs) -> dict      the task's metrics, from what a model outputs
    export_model(model)                  the model that becomes the `.tflite` (default: the
                                         model; a detector appends its post-processing)
    tflite_outputs(path, x)              what the int8 `.tflite` outputs, in the same form, so
                                         `scores` compares like with like
    pictures(out_dir, examples)          the task's own pictures in report.md

`ClassificationTask` implements all of them for single-label classification with logits, and
the other recipes subclass it. A dense task (segmentation masks, detection boxes,
super-resolved images, face embeddings) overrides the data methods (`load`, `check`, and
`dataset` when an augmentation must move the labels too), the models, `loss` / `metrics`, and
`scores` / `tflite_outputs` for its outputs, which may be any array with a leading sample axis
(or a list / dict of them); a score may be a dict (e.g. IoU per class), which the report
shows as a table of its own. `pictures` is where its report shows masks, boxes or images.
`headline` names the score that is plotted and compared, and `higher_is_better` says which way
it goes (the flow warns when the teacher is worse than the student trained alone).
"""
import numpy as np

from recipes.config import RecipeError


class Task:
    """The interface (see the module docstring). Each method's docstring says what the flow
    expects of it."""

    name = "task"
    headline = "score"
    higher_is_better = True
    default_image_size = 32
    # What the model's output holds, for the file's metadata ("logits", "sigmoid_logits",
    # "probabilities"; None for a detector, whose post-process says it), and the activation
    # a client that reads scores needs appended to it (`deployable`).
    output_meaning = "logits"
    client_activation = "softmax"
    # A fixed input range of the QAT student (`quantize_model(input_range=...)`), e.g. (0, 255)
    # when the images may not span all pixel values; None: learned from the data.
    qat_input_range = None

    # -- configuration ----------------------------------------------------------------------
    def check_config(self, config):
        """Raises RecipeError for flag values this task cannot use; needs no data."""

    def knowledge(self, config, steps_per_epoch=None):
        """The knowledge terms of the distillation (default: `--knowledge` and its flags;
        `steps_per_epoch` fills in `{warmup_steps}`, see `config.knowledge_terms`)."""
        from recipes import config as recipe_config

        return recipe_config.knowledge_terms(config, steps_per_epoch)

    # -- data -------------------------------------------------------------------------------
    def load(self, config):
        """The data as `tfkd.data.Splits` (x: (N, H, W, C) uint8 images; y: per task)."""
        raise NotImplementedError

    def check(self, splits):
        """Raises `tfkd.data.DataError` when the labels do not fit the task."""

    def prepare(self, splits):
        """Computes what depends on the data (called once, before any model is built)."""

    def adapt_knowledge(self, terms, splits):
        """The knowledge terms, completed with what depends on the data (default: as built)."""
        return terms

    def sample_weights(self, y):
        """Per-sample weights of the task loss and the knowledge terms for labels `y`, or None."""
        return None

    def augmentation(self, seed):
        """A random augmentation of input batches (used with --augment), or None."""
        return None

    def dataset(self, x, y, weights, batch_size, augment, seed):
        """The shuffled, batched training pipeline, augmented when `augment`. Teacher and
        student see the same batch. Override it when an augmentation must move the labels
        (masks, boxes) with the image."""
        from tfkd import data

        return data.make_dataset(x, y, batch_size, sample_weight=weights,
                                 augment=self.augmentation(seed) if augment else None,
                                 shuffle=True, seed=seed)

    def student_input(self):
        """A Keras layer mapping the data to what the student sees (e.g. a downsampling), or
        None. The teacher sees the data as it is."""
        return None

    def variants(self, config):
        """[(row name, student input layer)]: more students distilled from the same teacher
        with the same knowledge and budget after the main one, each seeing the data through
        its own layer (a low-resolution face student beside the full-resolution one). They
        are reported, not exported. Default: none."""
        return []

    # -- models -----------------------------------------------------------------------------
    def build_teacher(self, config, splits, bn_momentum):
        """A new, untrained teacher (when no --teacher file is given)."""
        raise NotImplementedError

    def check_teacher(self, teacher, splits):
        """Raises `tfkd.data.DataError` when a loaded teacher does not fit the data."""

    def build_student(self, config, splits, input_shape, bn_momentum):
        """A new student taking inputs of `input_shape` (after `student_input`)."""
        raise NotImplementedError

    def loss(self):
        """A new Keras loss of the task (on the model's outputs and `y`)."""
        raise NotImplementedError

    def metrics(self):
        """New Keras metrics shown during training."""
        return []

    # -- evaluation and report --------------------------------------------------------------
    def scores(self, y_true, outputs):
        """{metric name: float} from the labels and what a model outputs (numpy), computed the
        same way for the Keras models and the `.tflite` file. Must hold `headline`."""
        raise NotImplementedError

    def export_model(self, model):
        """The Keras model that is converted to `.tflite` for `model` (default: itself)."""
        return model

    def deployable(self, model, target):
        """(the Keras model converted for `target`, what its output means). MediaPipe Tasks
        report a classifier's output as scores, so for target "mediapipe" the model gets
        `client_activation` (softmax probabilities) appended."""
        from tfkd.students import with_activation

        export = self.export_model(model)
        if target == "mediapipe" and self.client_activation:
            return with_activation(export, self.client_activation), "probabilities"
        return export, self.output_meaning

    def predict(self, model, x):
        """What the Keras `model` outputs for images `x`, in the form `scores` takes (default:
        `recipes.flow.predict`, batched)."""
        from recipes.flow import predict

        return predict(model, x)

    def reference_outputs(self, x):
        """[(row name, outputs)] of references that need no training, scored like the models
        (super-resolution's bicubic upsampling); default none."""
        return []

    # Input shape at which the `.tflite` is timed, for a file whose input size is dynamic
    # (None: the file's own shape).
    latency_input_shape = None

    def tflite_outputs(self, path, x):
        """What the `.tflite` file at `path` outputs for images `x`, in the form `scores`
        takes (default: one row of values per sample)."""
        from tfkd.tflite.evaluate import run_on_data

        _, outputs, _ = run_on_data(str(path), x)
        return outputs.reshape(len(x), -1)

    def pictures(self, out_dir, examples):
        """Writes the task's own pictures into `out_dir`; returns [(caption, file name)].

        `examples` holds a few test samples: `{"x": images, "y": labels, "outputs": {model
        name: outputs}}`, the outputs of each model of the report on those images.
        """
        return []


def zoo_teacher(config, splits, bn_momentum):
    """A new `--teacher_arch` x `--teacher_width` model of `tfkd.students`, named "teacher"."""
    from tfkd import students

    teacher = students.build(config.teacher_arch, splits.image_shape, splits.num_classes,
                             width=config.teacher_width, bn_momentum=bn_momentum)
    teacher._name = "teacher"  # the zoo names models by architecture, like the student
    return teacher


def classification_scores(y_true, logits):
    y_true = np.asarray(y_true).reshape(-1)
    return {"accuracy": float(np.mean(np.argmax(logits, -1) == y_true))}


def _augmentation(seed):
    import keras

    return keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomTranslation(0.125, 0.125, fill_mode="reflect", seed=seed),
    ], name="augment")


class ClassificationTask(Task):
    """Single-label classification: integer labels, logits out, zoo students, accuracy."""

    name = "classification"
    headline = "accuracy"

    def check_config(self, config):
        from tfkd import students

        zoo = students.names("classification")
        if config.student not in zoo:
            raise RecipeError(f"--student={config.student!r} is not in the zoo: "
                              f"{', '.join(zoo)}.")
        if not config.teacher and config.teacher_arch not in zoo:
            raise RecipeError(f"--teacher_arch={config.teacher_arch!r} is not in the zoo: "
                              f"{', '.join(zoo)}.")

    def load(self, config):
        from tfkd import data

        size = config.image_size or self.default_image_size
        splits = data.load(config.data, image_size=(size, size), download=config.download,
                           data_dir=config.data_dir)
        return splits.subset(config.max_train or None, config.max_test or None)

    def check(self, splits):
        from tfkd import data

        for name, split in (("train", splits.train), ("test", splits.test)):
            data.check_labels(split[1], splits.num_classes, f"{name} labels")

    def augmentation(self, seed):
        return _augmentation(seed)

    def build_teacher(self, config, splits, bn_momentum):
        return zoo_teacher(config, splits, bn_momentum)

    def check_teacher(self, teacher, splits):
        from tfkd import data

        data.check_teacher(teacher, splits.num_classes, splits.image_shape)

    def build_student(self, config, splits, input_shape, bn_momentum):
        from tfkd import students

        return students.build(config.student, input_shape, splits.num_classes,
                              width=config.student_width, bn_momentum=bn_momentum)

    def loss(self):
        import keras

        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def metrics(self):
        return ["accuracy"]

    def scores(self, y_true, outputs):
        return classification_scores(y_true, outputs)
