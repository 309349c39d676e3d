"""Semantic-segmentation recipe: distil a wide segmenter into an Edge TPU int8 student.

    python -m recipes.segmentation                       # CamVid from ../shared/data
    python -m recipes.segmentation --teacher=my_deeplab.keras --knowledge=pixel_kd,cwd
    python -m recipes.segmentation --data=path/to/folder --image_size=128   # images/ + masks/

`--data` is an `.npz` with `x_*` images and `y_*` (N, H, W) class-id masks (CamVid's layout,
`tfkd.data.load_segmentation_npz`) or a folder of `images/*.jpg` + `masks/*.png`
(`tfkd.data.load_segmentation_folder`). Pixels of the ignore label (CamVid's void, id 11) are
left out of the task loss (`SparseCategoricalCrossentropy(ignore_class=...)`), of the pixel-wise
knowledge terms (their `ignore_label` is set from the data when the spec leaves it out) and of
every score. Teacher and students are `tfkd.students` segmenters (`lraspp_mobile`,
`unet_mobile`): logits at the input resolution, taps `stage1..3` and `head` for feature terms
(`cwd:student_layer=head,teacher_layer=head`). A user's own `.keras` teacher (e.g. a
keras-hub DeepLabV3) works through `--teacher` if it outputs per-pixel logits of the data's
classes; it may predict at another resolution (the dense terms resize).

The report holds mIoU, pixel accuracy and per-class IoU of the teacher, the student alone, the
distilled student, the QAT student and the int8 `.tflite` (scored the same way, with
`tfkd.tflite.segmentation_scores`, i.e. `keras.metrics.MeanIoU`), and a picture of a few test
images: image, ground truth and each model's prediction in the data's class colours.
"""
import numpy as np
from absl import app

from recipes import config
from recipes import flow
from recipes.task import Task
from recipes.task import zoo_teacher

# The budget of benchmarks/segmentation.py: a 606k-parameter U-Net teacher (60 epochs, about
# 12 minutes here) and a 46k-parameter LR-ASPP student, both with flips and scale-crops.
config.define_flags(
    data=str(config.SHARED / "data" / "camvid.npz"),
    teacher_arch="unet_mobile", teacher_width=2.0, teacher_epochs=60,
    student="lraspp_mobile", student_width=0.5,
    knowledge="pixel_kd,cwd:temperature=4,weight=3",
    temperature=1.0,
    student_loss_weight=1.0,
    epochs=25, batch_size=16, learning_rate=5e-3, augment=True,
    qat_epochs=2,
    output_dir="runs/segmentation",
)

# Rows of the report's picture, in order (a row is left out when the run has no such model).
PICTURE_MODELS = ("teacher", "student alone", "distilled student", "QAT student (Keras)",
                  "int8 student (.tflite)")
PICTURE_IMAGES = 4


class SegmentationTask(Task):
    """Per-pixel class ids with an ignore label: dense logits, masked cross-entropy, mIoU."""

    name = "segmentation"
    headline = "miou"
    # MediaPipe's ImageSegmenter applies the softmax itself (the metadata says SOFTMAX), so
    # the file keeps its logits: one op less, and the category mask is their argmax.
    client_activation = None

    def __init__(self):
        self.splits = None

    # -- configuration ----------------------------------------------------------------------
    def check_config(self, cfg):
        from tfkd import students

        zoo = students.names(task="segmentation")
        if cfg.student not in zoo:
            raise config.RecipeError(f"--student={cfg.student!r} is not a segmentation student "
                                     f"of the zoo: {', '.join(zoo)}.")
        if not cfg.teacher and cfg.teacher_arch not in zoo:
            raise config.RecipeError(f"--teacher_arch={cfg.teacher_arch!r} is not a "
                                     f"segmentation model of the zoo: {', '.join(zoo)}.")

    def adapt_knowledge(self, terms, splits):
        """Pixel-wise terms whose spec set no `ignore_label` get the data's."""
        if splits.ignore_label is None:
            return terms
        adapted = []
        for term in terms:
            if getattr(term, "ignore_label", "absent") is None:
                term = type(term).from_config({**term.get_config(),
                                               "ignore_label": int(splits.ignore_label)})
            adapted.append(term)
        return adapted

    # -- data -------------------------------------------------------------------------------
    def load(self, cfg):
        import pathlib

        from tfkd import data

        path = pathlib.Path(cfg.data)
        if path.is_dir():
            size = (cfg.image_size, cfg.image_size) if cfg.image_size else None
            splits = data.load_segmentation_folder(path, image_size=size, seed=cfg.seed)
        elif path.suffix == ".npz":
            splits = data.load_segmentation_npz(path)
        else:
            raise data.DataError(
                f"--data='{path}' is neither an .npz with x_*/y_* masks nor a folder with "
                "images/ and masks/ (see `python -m recipes.segmentation --helpfull`).")
        return splits.subset(cfg.max_train or None, cfg.max_test or None)

    def check(self, splits):
        from tfkd import data

        for name, (x, y) in (("train", splits.train), ("test", splits.test)):
            data.check_masks(x, y, splits.num_classes, splits.ignore_label,
                             what=f"{name} masks")

    def prepare(self, splits):
        self.splits = splits

    def dataset(self, x, y, weights, batch_size, augment, seed):
        from tfkd import data

        return data.segmentation_dataset(x, y, batch_size, sample_weight=weights,
                                         augment=True if augment else None, shuffle=True,
                                         seed=seed, ignore_label=self.splits.ignore_label,
                                         num_classes=self.splits.num_classes)

    # -- models -----------------------------------------------------------------------------
    def build_teacher(self, cfg, splits, bn_momentum):
        return zoo_teacher(cfg, splits, bn_momentum)

    def check_teacher(self, teacher, splits):
        from tfkd import data

        shape = teacher.output_shape
        if isinstance(shape, list):
            shape = shape[0]
        if len(shape) != 4:
            raise data.DataError(
                f"The teacher `{teacher.name}` outputs shape {shape}; a segmentation teacher "
                "outputs per-pixel logits (batch, height, width, classes).")
        data.check_teacher(teacher, splits.num_classes, splits.image_shape)

    def build_student(self, cfg, splits, input_shape, bn_momentum):
        from tfkd import students

        return students.build(cfg.student, input_shape, splits.num_classes,
                              width=cfg.student_width, bn_momentum=bn_momentum)

    def loss(self):
        import keras

        return keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, ignore_class=self.splits.ignore_label)

    def metrics(self):
        import keras

        return [keras.metrics.MeanIoU(self.splits.num_classes, name="miou",
                                      ignore_class=self.splits.ignore_label,
                                      sparse_y_pred=False)]

    # -- evaluation and report --------------------------------------------------------------
    def scores(self, y_true, outputs):
        import tfkd.tflite as tfl

        s = tfl.segmentation_scores(y_true, outputs, num_classes=self.splits.num_classes,
                                    ignore_class=self.splits.ignore_label)
        per_class = {name: iou for name, iou in zip(self.splits.class_names,
                                                    s["per_class_iou"])}
        return {"miou": s["miou"], "pixel_accuracy": s["pixel_accuracy"], "iou": per_class}

    def tflite_outputs(self, path, x):
        from tfkd.tflite.evaluate import run_on_data

        _, outputs, _ = run_on_data(str(path), x)
        return outputs

    def pictures(self, out_dir, examples):
        path = out_dir / "predictions.png"
        names = [m for m in PICTURE_MODELS if m in examples["outputs"]]
        draw_predictions(path, examples["x"][:PICTURE_IMAGES], examples["y"][:PICTURE_IMAGES],
                         {m: examples["outputs"][m][:PICTURE_IMAGES] for m in names},
                         self.colors(), self.splits.ignore_label)
        return [("Test images: the image, its ground truth (void in black) and each model's "
                 "prediction, in the data's class colours.", path.name)]

    def colors(self):
        """One RGB colour per class id (the data's, or a fixed palette), plus black for void."""
        n = self.splits.num_classes
        given = self.splits.class_colors
        if given is not None and len(given) >= n:
            palette = np.asarray(given[:n], np.uint8)
        else:
            palette = (np.random.default_rng(0).uniform(40, 255, (n, 3))).astype(np.uint8)
        return np.concatenate([palette, np.zeros((1, 3), np.uint8)])


def colorize(mask, colors, ignore_label=None):
    """Class ids (H, W) -> RGB (H, W, 3); ids outside the palette and `ignore_label` -> the
    palette's last colour (void)."""
    mask = np.asarray(mask).astype(np.int64)
    void = len(colors) - 1
    ids = np.where((mask < 0) | (mask >= void), void, mask)
    if ignore_label is not None:
        ids = np.where(mask == ignore_label, void, ids)
    return colors[ids]


def draw_predictions(path, images, masks, outputs, colors, ignore_label=None):
    """A grid: one row per image; columns image, ground truth, then each model's argmax."""
    from recipes import report

    rows = [[np.asarray(images[r], np.uint8), colorize(masks[r], colors, ignore_label)]
            + [colorize(np.argmax(outputs[m][r], -1), colors) for m in outputs]
            for r in range(len(images))]
    report.image_grid(path, rows, ["image", "ground truth"] + list(outputs))


def main(argv):
    del argv
    flow.main(SegmentationTask)


if __name__ == "__main__":
    app.run(main)
