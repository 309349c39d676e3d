"""Classification recipe: distil a teacher into an Edge TPU-friendly int8 student.

    python -m recipes.classification --data=../shared/data/cifar10.npz \
        --teacher=../shared/models/cifar10_resnet20_teacher.keras --max_train=10000 \
        --epochs=10 --knowledge=soft_targets,hint --output_dir=runs/cifar10
    python -m recipes.classification --data=path/to/image_folder --image_size=64 \
        --teacher_epochs=20 --output_dir=runs/folder

`--helpfull` lists every flag. The task is `recipes.task.ClassificationTask`; the steps are
those of every recipe (`recipes.flow`).
"""
from absl import app

from recipes import config
from recipes import flow
from recipes.task import ClassificationTask

config.define_flags(data=str(config.SHARED / "data" / "cifar10.npz"),
                    output_dir="runs/classification")


def main(argv):
    del argv
    flow.main(ClassificationTask)


if __name__ == "__main__":
    app.run(main)
