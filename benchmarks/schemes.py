"""The distillation schemes of `tfkd.schemes`, each against its natural baseline, on real data.

    python -m benchmarks.schemes                                    # hours on 2 CPU cores
    python -m benchmarks.schemes --train_size=512 --test_size=512 --epochs=1 --df_steps=20
    python -m benchmarks.schemes --rows=data_free --df_steps=3000   # one row

Rows (same student initialisation, data order and epochs inside a row):
  mutual       two small CIFAR-10 CNNs trained alone | the same two by MutualLearning
  self         a CIFAR-10 CNN alone | SelfDistillation (head on stage2, hint from stage3)
  multi        KD from the best single teacher | MultiTeacher (confidence weighting) over the
               reference ResNet-20 and a CNN teacher trained here
  assistant    direct KD ResNet-20 -> width-4 CNN | TeacherAssistant via a width-24 CNN
  adversarial  plain SoftTargets KD | AdversarialDistillation (SoftTargets + discriminator)
  data_free    MNIST: a LeNet-5 (BN) teacher trained on the images | a student trained by
               DataFree on generated images only (its test accuracy, and the ratio to the
               teacher's; DAFL reports ~98% of the teacher on MNIST)
Test accuracy of the final epoch. Writes `<output_dir>/schemes.json` and `.md`.
"""
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app
from absl import flags

from benchmarks import common

ROWS = ("mutual", "self", "multi", "assistant", "adversarial", "data_free")

flags.DEFINE_integer("train_size", 10000, "First N CIFAR-10 training images.")
flags.DEFINE_integer("test_size", 2000, "First N CIFAR-10 test images.")
flags.DEFINE_integer("epochs", 10, "Epochs of every CIFAR-10 run (each TeacherAssistant stage).")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_float("learning_rate", 3e-3, "Adam learning rate.")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_list("rows", list(ROWS), "Rows to run: " + ", ".join(ROWS) + ".")
flags.DEFINE_integer("mnist_train_size", 60000, "MNIST images for the data-free teacher.")
flags.DEFINE_integer("teacher_epochs", 3, "Epochs of the MNIST teacher.")
flags.DEFINE_integer("df_steps", 2000, "DataFree steps (batches of --df_batch generated images).")
flags.DEFINE_integer("df_batch", 128, "Generated images per DataFree step.")
flags.DEFINE_string("output_dir", str(common.RESULTS), "Results folder.")
FLAGS = flags.FLAGS


def cnn(width, name, classes=10, input_shape=(32, 32, 3), rescale=1 / 255.0, seed=0):
    """Conv-BN-ReLU x3 (stride 1, 2, 2) + GAP + Dense; taps stage1, stage2, stage3, pool."""
    import keras

    init = keras.initializers.HeNormal(seed=seed)
    inputs = keras.Input(input_shape)
    h = keras.layers.Rescaling(rescale)(inputs)
    for i, (mult, stride) in enumerate([(1, 1), (2, 2), (4, 2)], start=1):
        h = keras.layers.Conv2D(width * mult, 3, strides=stride, padding="same", use_bias=False,
                                kernel_initializer=init, name=f"conv{i}")(h)
        # momentum 0.9: with a few hundred steps the default 0.99 leaves the moving statistics
        # far from the data, and inference-mode accuracy near chance.
        h = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(h)
        h = keras.layers.ReLU(name=f"stage{i}")(h)
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    return keras.Model(inputs, keras.layers.Dense(classes, name="logits")(h), name=name)


def lenet(name, width=6, seed=0):
    """LeNet-5 with BatchNorm for 28x28x1 inputs in [0, 1] (DAFL's MNIST teacher shape)."""
    import keras

    init = keras.initializers.HeNormal(seed=seed)
    inputs = keras.Input((28, 28, 1))
    h = inputs
    for i, channels in enumerate([width, int(width * 16 / 6)], start=1):
        h = keras.layers.Conv2D(channels, 5, padding="same", use_bias=False,
                                kernel_initializer=init, name=f"conv{i}")(h)
        h = keras.layers.BatchNormalization(name=f"bn{i}")(h)
        h = keras.layers.ReLU(name=f"relu{i}")(h)
        h = keras.layers.MaxPooling2D(name=f"pool{i}")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(int(width * 20), activation="relu", name="fc1")(h)
    h = keras.layers.Dense(int(width * 14), activation="relu", name="features")(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(h), name=name)


def _ce():
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _opt():
    import keras

    return keras.optimizers.Adam(FLAGS.learning_rate)


def _acc(model, x, y):
    import numpy as np

    return float(np.mean(np.argmax(model.predict(x, batch_size=256, verbose=0), -1) == y))


def _fit(model, ds, epochs=None):
    return model.fit(ds, epochs=epochs or FLAGS.epochs, verbose=0)


def _alone(width, name, data, seed):
    import keras

    keras.utils.set_random_seed(seed)
    model = cnn(width, name, seed=seed)
    model.compile(_opt(), _ce())
    _fit(model, data["train"])
    return model


def row_mutual(data):
    import keras
    import tfkd

    a = _alone(8, "a", data, 1)
    b = _alone(8, "b", data, 2)
    keras.utils.set_random_seed(1)
    sa, sb = cnn(8, "a", seed=1), cnn(8, "b", seed=2)
    ml = tfkd.schemes.MutualLearning([sa, sb], temperature=1.0)
    ml.compile(_opt(), _ce())
    _fit(ml, data["train"])
    x, y = data["test"]
    base = [_acc(a, x, y), _acc(b, x, y)]
    ours = [_acc(sa, x, y), _acc(sb, x, y)]
    return {"baseline": "two 8-wide CNNs trained alone", "baseline_acc": base,
            "scheme": "MutualLearning(T=1)", "scheme_acc": ours,
            "params": sa.count_params()}


def row_self(data):
    import keras
    import tfkd

    alone = _alone(16, "student", data, 3)
    keras.utils.set_random_seed(3)
    student = cnn(16, "student", seed=3)
    sd = tfkd.schemes.SelfDistillation(student, ["stage2"], hint_layer="stage3")
    sd.compile(_opt(), _ce())
    _fit(sd, data["train"])
    x, y = data["test"]
    return {"baseline": "16-wide CNN alone", "baseline_acc": _acc(alone, x, y),
            "scheme": "SelfDistillation(stage2 head, stage3 hint)", "scheme_acc": _acc(student, x, y),
            "early_exit_acc": _acc(sd.early_exit("stage2"), x, y), "params": student.count_params()}


def _kd(student, teacher, data, knowledge=None):
    import tfkd

    d = tfkd.Distiller(student, teacher, knowledge=knowledge or [tfkd.knowledge.SoftTargets(4.0)],
                       student_loss_weight=0.5)
    d.compile(_opt(), _ce())
    _fit(d, data["train"])
    return student


def row_multi(data):
    import keras
    import tfkd

    x, y = data["test"]
    resnet = data["teacher"]
    second = _alone(32, "cnn_teacher", data, 4)
    teachers = [resnet, second]
    accs = {t.name: _acc(t, x, y) for t in teachers}
    best = max(teachers, key=lambda t: accs[t.name])
    keras.utils.set_random_seed(5)
    single = _kd(cnn(8, "student", seed=5), best, data)
    keras.utils.set_random_seed(5)
    student = cnn(8, "student", seed=5)
    mt = tfkd.schemes.MultiTeacher(student, teachers, weighting="confidence", temperature=4.0,
                                   student_loss_weight=0.5)
    mt.compile(_opt(), _ce())
    _fit(mt, data["train"])
    return {"baseline": f"KD from the best single teacher ({best.name})",
            "baseline_acc": _acc(single, x, y), "scheme": "MultiTeacher(confidence)",
            "scheme_acc": _acc(student, x, y), "teacher_acc": accs}


def row_assistant(data):
    import keras
    import tfkd

    x, y = data["test"]
    keras.utils.set_random_seed(6)
    direct = _kd(cnn(4, "student", seed=6), data["teacher"], data)
    keras.utils.set_random_seed(6)
    student = cnn(4, "student", seed=6)
    assistant = cnn(24, "assistant", seed=7)
    ta = tfkd.schemes.TeacherAssistant(data["teacher"], [assistant], student,
                                       knowledge=[tfkd.knowledge.SoftTargets(4.0)],
                                       student_loss_weight=0.5)
    ta.compile(_opt(), _ce())
    ta.fit(data["train"], epochs=FLAGS.epochs, verbose=0)
    return {"baseline": "direct KD ResNet-20 (274k) -> 4-wide CNN",
            "baseline_acc": _acc(direct, x, y),
            "scheme": "TeacherAssistant via a 24-wide CNN", "scheme_acc": _acc(student, x, y),
            "assistant_acc": _acc(assistant, x, y), "student_params": student.count_params(),
            "assistant_params": assistant.count_params()}


def row_adversarial(data):
    import keras
    import tfkd

    x, y = data["test"]
    keras.utils.set_random_seed(8)
    plain = _kd(cnn(8, "student", seed=8), data["teacher"], data)
    keras.utils.set_random_seed(8)
    student = cnn(8, "student", seed=8)
    adv = tfkd.schemes.AdversarialDistillation(
        student, data["teacher"], knowledge=[tfkd.knowledge.SoftTargets(4.0)],
        student_loss_weight=0.5, adversarial_weight=0.1)
    adv.compile(_opt(), _ce(), discriminator_optimizer=keras.optimizers.Adam(1e-4))
    _fit(adv, data["train"])
    return {"baseline": "SoftTargets KD", "baseline_acc": _acc(plain, x, y),
            "scheme": "AdversarialDistillation(SoftTargets + D on logits)",
            "scheme_acc": _acc(student, x, y)}


def row_data_free(_):
    import keras
    import numpy as np
    import tfkd

    with np.load(common.SHARED / "data" / "mnist.npz") as d:
        x = d["x_train"][:FLAGS.mnist_train_size, ..., None].astype("float32") / 255.0
        y = d["y_train"][:FLAGS.mnist_train_size].astype("int32")
        x_test = d["x_test"][..., None].astype("float32") / 255.0
        y_test = d["y_test"].astype("int32")
    keras.utils.set_random_seed(9)
    teacher = lenet("lenet5_teacher", width=6, seed=9)
    teacher.compile(keras.optimizers.Adam(1e-3), _ce())
    teacher.fit(x, y, epochs=FLAGS.teacher_epochs, batch_size=128, verbose=0)
    student = lenet("lenet5_half_student", width=3, seed=10)
    df = tfkd.schemes.DataFree(teacher, student, batch_size=FLAGS.df_batch, bn_weight=10.0,
                               activation_weight=0.1, activation_layer="features",
                               generator_width=32)
    df.compile(optimizer=keras.optimizers.Adam(1e-3),
               generator_optimizer=keras.optimizers.Adam(1e-3))
    steps = max(1, FLAGS.df_steps)
    epochs = max(1, steps // 100)
    df.fit(epochs=epochs, steps_per_epoch=max(1, steps // epochs), verbose=0)
    t_acc, s_acc = _acc(teacher, x_test, y_test), _acc(student, x_test, y_test)
    return {"baseline": "LeNet-5 teacher trained on the images (test accuracy)",
            "baseline_acc": t_acc, "scheme": "DataFree student (half-width LeNet-5), no image",
            "scheme_acc": s_acc, "ratio_to_teacher": s_acc / max(t_acc, 1e-9),
            "steps": steps, "generated_images": steps * FLAGS.df_batch}


def main(_):
    import keras

    unknown = set(FLAGS.rows) - set(ROWS)
    if unknown:
        raise app.UsageError(f"Unknown rows {sorted(unknown)}; choose from {ROWS}.")
    data = {}
    if set(FLAGS.rows) - {"data_free"}:
        x, y = common.load_cifar10("train", FLAGS.train_size)
        x_test, y_test = common.load_cifar10("test", FLAGS.test_size)
        data["train"] = common.train_dataset(x, y, FLAGS.batch_size, seed=FLAGS.seed)
        data["test"] = (x_test, y_test)
        data["teacher"] = keras.models.load_model(common.TEACHER_PATH)
    results = {}
    for row in FLAGS.rows:
        start = time.time()
        results[row] = globals()[f"row_{row}"](data)
        results[row]["seconds"] = round(time.time() - start, 1)
        print(row, results[row], flush=True)

    def fmt(v):
        return " / ".join(f"{a:.4f}" for a in v) if isinstance(v, list) else f"{v:.4f}"

    table = common.markdown_table(
        ["row", "baseline", "baseline acc", "scheme", "scheme acc", "s"],
        [[row, r["baseline"], fmt(r["baseline_acc"]), r["scheme"], fmt(r["scheme_acc"]),
          r["seconds"]] for row, r in results.items()])
    payload = {"machine": common.machine(),
               "flags": {k: FLAGS[k].value for k in ("train_size", "test_size", "epochs",
                                                     "batch_size", "learning_rate", "seed",
                                                     "rows", "mnist_train_size",
                                                     "teacher_epochs", "df_steps", "df_batch")},
               "results": results}
    common.RESULTS = __import__("pathlib").Path(FLAGS.output_dir)
    common.write_results("schemes", payload, table)


if __name__ == "__main__":
    app.run(main)
