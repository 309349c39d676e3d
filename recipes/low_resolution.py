"""Low-resolution recipe: the student sees 2x or 4x downsampled images, the teacher full ones.

    python -m recipes.low_resolution --factor=4 \
        --teacher=../shared/models/cifar10_resnet20_teacher.keras --output_dir=runs/lowres4
    python -m recipes.low_resolution --factor=4 --sr_frontend --knowledge=soft_targets

The Distiller feeds each batch to the teacher as is and to the student through
`student_input=keras.layers.Resizing(H/f, W/f, interpolation="area")`, so one pipeline serves
both. The exported student takes the small images. With `--sr_frontend` the student starts
with a learned upsampling front end (bilinear resize back to the teacher's size plus a learned
3x3 residual correction), and a `Hint` from the student's `stage1` to the teacher's `stage1`
trains it with the teacher's full-resolution features (super-resolution-guided
distillation). Every op maps to the Edge TPU (RESIZE_BILINEAR, CONV_2D, ADD).
"""
from absl import app
from absl import flags

from recipes import config
from recipes import flow
from recipes.task import ClassificationTask

config.define_flags(
    data=str(config.SHARED / "data" / "cifar10.npz"),
    teacher=str(config.SHARED / "models" / "cifar10_resnet20_teacher.keras"),
    student="mobile_cnn",
    knowledge="soft_targets",
    max_train=10000,
    epochs=10,
    cache_teacher=True,
    output_dir="runs/low_resolution",
)
flags.DEFINE_enum("factor", "4", ["2", "4"], "Downsampling factor of the student's images.")
flags.DEFINE_bool("sr_frontend", False, "Give the student a learned upsampling front end "
                                        "trained with the teacher's stage1 features.")


class LowResolutionTask(ClassificationTask):
    """Classification where the student sees the images downsampled by `factor`."""

    def __init__(self, factor=4, sr_frontend=False):
        if int(factor) < 1:
            raise config.RecipeError(f"factor must be 1 or more, got {factor}.")
        self.factor = int(factor)
        self.sr_frontend = bool(sr_frontend)
        self._downsample = None

    def knowledge(self, cfg, steps_per_epoch=None):
        import tfkd

        terms = super().knowledge(cfg, steps_per_epoch)
        if self.sr_frontend:  # the front end learns from the teacher's full-resolution features
            terms.append(tfkd.knowledge.Hint("stage1", "stage1", weight=cfg.feature_weight))
        return terms

    def prepare(self, splits):
        import keras

        h, w = splits.image_shape[0] // self.factor, splits.image_shape[1] // self.factor
        if min(h, w) < 1:
            raise config.RecipeError(f"Images of shape {splits.image_shape} are too small for "
                                     f"--factor={self.factor}.")
        self._downsample = keras.layers.Resizing(h, w, interpolation="area", name="downsample")

    def student_input(self):
        return self._downsample

    def build_student(self, cfg, splits, input_shape, bn_momentum):
        import keras

        from tfkd import students

        h, w, c = input_shape

        def sr_front_end(inputs):
            up = keras.layers.Resizing(h * self.factor, w * self.factor,
                                       interpolation="bilinear", name="upsample")(inputs)
            refine = keras.layers.Conv2D(c, 3, padding="same", name="sr_refine",
                                         kernel_initializer="zeros")(up)
            return keras.layers.Add(name="sr_out")([up, refine])

        front_end = sr_front_end if self.sr_frontend else None
        return students.build(cfg.student, input_shape, splits.num_classes,
                              width=cfg.student_width, front_end=front_end,
                              bn_momentum=bn_momentum)


def main(argv):
    del argv
    flow.main(lambda: LowResolutionTask(int(flags.FLAGS.factor), flags.FLAGS.sr_frontend))


if __name__ == "__main__":
    app.run(main)
