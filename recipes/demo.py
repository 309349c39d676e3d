"""The README's main job: distil a teacher into an int8 TFLite student, offline, in minutes.

    python -m recipes.demo            # or: make demo
    python -m recipes.demo --quick    # the shortened form CI runs

Uses only what the repository holds: the CIFAR-10 sample `recipes/data/cifar10_sample.npz`
(2,000 train / 500 test images) and a copy of the reference ResNet-20 teacher
(`recipes/data/cifar10_resnet20_teacher.keras`, 274k parameters). It trains a 71k-parameter
`mobile_cnn` student alone and with soft targets + a hint (30 epochs, flips and shifts that
teacher and student see alike), exports the distilled student as a fully int8 `.tflite`,
evaluates it on the 500 test images, times every model with the TFLite runtime, and writes
the report. About 4 minutes on 2 CPU cores (measured: 241 s on an idle machine; with the
BatchNorm statistics re-estimated before evaluation and export, 328 s on a shared one: student
alone 57.4%, distilled 59.2%, int8 59.0%, teacher 89.2%).
Any flag of the classification recipe applies (`--helpfull`).
"""
from absl import app
from absl import flags

from recipes import config
from recipes import flow
from recipes.task import ClassificationTask

DATA = config.REPO / "recipes" / "data"
config.define_flags(
    data=str(DATA / "cifar10_sample.npz"),
    teacher=str(DATA / "cifar10_resnet20_teacher.keras"),
    student="mobile_cnn",
    knowledge="soft_targets,hint:student_layer=stage3,teacher_layer=stage3",
    student_loss_weight=0.5,
    epochs=30,
    batch_size=64,
    learning_rate=3e-3,
    augment=True,
    output_dir="runs/demo",
)
flags.DEFINE_bool("quick", False, "A shortened demo for CI: 600 train / 200 test images, "
                                  "2 epochs, cached teacher outputs (so no augmentation), "
                                  "no float latency runs.")
QUICK = dict(max_train=600, max_test=200, epochs=2, latency=False, verbose=0, augment=False,
             cache_teacher=True)


def main(argv):
    del argv
    flow.main(ClassificationTask, **(QUICK if flags.FLAGS.quick else {}))


if __name__ == "__main__":
    app.run(main)
