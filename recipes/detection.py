"""Object-detection recipe: distil a wide SSD detector into an Edge TPU int8 student.

    python -m recipes.detection                                   # raccoon, ../shared/data
    python -m recipes.detection --data=../shared/data/coco128 --image_size=256
    python -m recipes.detection --teacher=my_ssd.keras --knowledge=detection_soft_targets

`--data` is a folder with `annotations.json` (the schema of ../shared/data's raccoon and
coco128) or a COCO-format json (`tfkd.data.load_detection`). Images are resized to
`--image_size` (square, no letterbox); boxes stay normalised. Teacher and student are
`tfkd.students` SSDLite detectors (`ssd_mobile`: sigmoid class logits and SSD box
regressions against one `tfkd.Anchors` grid, strides 16/32/64); a user's `.keras` teacher
must output the same dict (`class_logits`, `box_regression`) against the same anchors.
Training targets come from `Anchors.encoder` inside the pipeline, after Keras 3's box-aware
augmentation (`--augment`: flips, zoom, translation, colour), so the teacher and the student
see the same augmented batch.

The exported file is the student with a sigmoid and TFLite's SSD post-process
(`TFLite_Detection_PostProcess`: boxes, classes, scores, count), fully int8 up to the
DEQUANTIZEs that feed the post-process, which is the only part the Edge TPU leaves to the CPU.
The report has COCO mAP@[.5:.95] and mAP@0.5 (pycocotools) of the teacher, the student alone,
the distilled student, the QAT student and the int8 `.tflite`, all through the same decode and
NMS, and a picture of test images with each model's boxes.
"""
import numpy as np
from absl import app
from absl import flags

from recipes import config
from recipes import flow
from recipes.task import Task

# The budget of benchmarks/detection.py: a 1.2M-parameter teacher (80 epochs, about 11 minutes
# here) and a 94k-parameter student, 20 epochs, both with box-aware augmentation.
config.define_flags(
    data=str(config.SHARED / "data" / "raccoon"),
    image_size=160,
    teacher_arch="ssd_mobile", teacher_width=2.0, teacher_epochs=80,
    student="ssd_mobile", student_width=0.5,
    knowledge="detection_soft_targets,foreground_imitation:weight=0.05",
    temperature=1.0, kd_weight=1.0, feature_weight=1.0,
    student_loss_weight=1.0,
    epochs=20, batch_size=16, learning_rate=3e-3, augment=True,
    qat_epochs=3,
    output_dir="runs/detection",
)
flags.DEFINE_list("anchor_strides", ["16", "32", "64"],
                  "Feature levels of the detectors (strides; 8 adds a finer level for small "
                  "objects, e.g. COCO).")
flags.DEFINE_integer("max_detections", 25, "Detections per image of the exported post-process "
                     "(and of the Keras models' scores, so that every row is counted alike).")

PICTURE_MODELS = ("teacher", "student alone", "distilled student", "int8 student (.tflite)")
PICTURE_IMAGES = 4
SCORE_THRESHOLD = 0.3  # boxes drawn in the pictures (mAP counts every detection)


def pack(boxes, classes):
    """(N, M, 4) boxes + (N, M) classes -> (N, M, 5) labels, one array like other tasks' y."""
    return np.concatenate([boxes, classes[..., None].astype("float32")], -1)


class DetectionTask(Task):
    """Boxes per image: SSD heads, focal + Huber losses, COCO mAP through pycocotools."""

    name = "detection"
    headline = "map50"
    # uint8 pixels in; the post-process outputs float boxes, classes, scores and count.
    # The post-process op's outputs are boxes, classes, scores (sigmoid inside export_model).
    output_meaning = None
    client_activation = None

    def __init__(self, strides=(16, 32, 64), max_detections=25):
        self.strides = tuple(int(s) for s in strides)
        self.max_detections = int(max_detections)
        self.splits = self.anchors = None

    # -- configuration ----------------------------------------------------------------------
    def check_config(self, cfg):
        from tfkd import students

        zoo = students.names(task="detection")
        if cfg.student not in zoo:
            raise config.RecipeError(f"--student={cfg.student!r} is not a detection student "
                                     f"of the zoo: {', '.join(zoo)}.")
        if not cfg.teacher and cfg.teacher_arch not in zoo:
            raise config.RecipeError(f"--teacher_arch={cfg.teacher_arch!r} is not a detector "
                                     f"of the zoo: {', '.join(zoo)}.")
        if cfg.image_size < 32:
            raise config.RecipeError(f"--image_size={cfg.image_size}: a detector needs 32 px "
                                     "or more (160-320 suits mobile detection).")

    def adapt_knowledge(self, terms, splits):
        """Terms that read ground-truth boxes (foreground masks) get the task's anchors, and
        feature terms left on their default levels get the levels these anchors have."""
        from tfkd.students.detection import LEVELS

        levels = tuple(LEVELS[s] for s in self.anchors.strides)
        out = []
        for term in terms:
            cfg, new = term.get_config(), {}
            if "anchors" in cfg and cfg["anchors"] is None:
                new["anchors"] = self.anchors.get_config()
            for key in ("student_layers", "teacher_layers"):
                if key in cfg and tuple(cfg[key]) == tuple(LEVELS.values())[1:] \
                        and tuple(cfg[key]) != levels:
                    new[key] = levels
            out.append(type(term).from_config({**cfg, **new}) if new else term)
        return out

    # -- data -------------------------------------------------------------------------------
    def load(self, cfg):
        from tfkd import data

        size = (cfg.image_size, cfg.image_size)
        det = data.load_detection(cfg.data, image_size=size)
        det = det.subset(cfg.max_train or None, cfg.max_test or None)
        self.detection_splits = det
        return data.Splits(
            train=(det.train.images, pack(det.train.boxes, det.train.classes)),
            test=(det.test.images, pack(det.test.boxes, det.test.classes)),
            class_names=list(det.class_names), source=det.source)

    def check(self, splits):
        from tfkd import data

        for name, (_, y) in (("train", splits.train), ("test", splits.test)):
            cls = y[..., 4]
            bad = cls[(cls >= splits.num_classes) | ((cls < 0) & (cls != -1))]
            if bad.size:
                raise data.DataError(f"{name} boxes have class ids {np.unique(bad)[:5]} outside "
                                     f"0..{splits.num_classes - 1}.")

    def prepare(self, splits):
        import tfkd

        self.splits = splits
        self.anchors = tfkd.Anchors(image_size=splits.image_shape[:2], strides=self.strides)

    def dataset(self, x, y, weights, batch_size, augment, seed):
        from tfkd import data

        return data.detection_dataset(
            x, y[..., :4], y[..., 4].astype("int32"), batch_size=batch_size,
            encode=self.anchors.encoder(self.splits.num_classes), augment=bool(augment),
            shuffle=True, seed=seed)

    # -- models -----------------------------------------------------------------------------
    def build_teacher(self, cfg, splits, bn_momentum):
        from tfkd import students

        teacher = students.build(cfg.teacher_arch, splits.image_shape, splits.num_classes,
                                 width=cfg.teacher_width, bn_momentum=bn_momentum,
                                 anchors=self.anchors)
        teacher._name = "teacher"
        return teacher

    def check_teacher(self, teacher, splits):
        from tfkd import data

        # One zero image tells the outputs of any loaded model (a Sequential has no `.output`).
        out = teacher(np.zeros((1, *splits.image_shape), "float32"), training=False)
        want = {"class_logits": (len(self.anchors), splits.num_classes),
                "box_regression": (len(self.anchors), 4)}
        got = {k: tuple(v.shape[1:]) for k, v in out.items()} if isinstance(out, dict) else out
        if not isinstance(got, dict) or any(got.get(k) != v for k, v in want.items()):
            raise data.DataError(
                f"The teacher `{teacher.name}` outputs {got}; a detection teacher outputs a dict "
                f"{want} (class logits and SSD box regressions against the recipe's anchors: "
                f"{self.anchors}).")

    def build_student(self, cfg, splits, input_shape, bn_momentum):
        from tfkd import students

        return students.build(cfg.student, input_shape, splits.num_classes,
                              width=cfg.student_width, bn_momentum=bn_momentum,
                              anchors=self.anchors)

    def loss(self):
        from tfkd.anchors import detection_losses

        return detection_losses()

    def export_model(self, model):
        from tfkd.students.detection import export_model

        return export_model(model, self.anchors, max_detections=self.max_detections)

    # -- evaluation and report --------------------------------------------------------------
    def detections(self, outputs):
        """Detections (boxes, classes, scores, count) from raw heads or a post-processed file."""
        if "boxes" in outputs:
            return outputs
        return self.anchors.detect(outputs["class_logits"], outputs["box_regression"],
                                   max_detections=self.max_detections)

    def scores(self, y_true, outputs):
        import tfkd.tflite as tfl

        det = self.detections(outputs)
        s = tfl.coco_map(y_true[..., :4], y_true[..., 4].astype("int32"), det,
                         image_sizes=self.splits.image_shape[:2],
                         num_classes=self.splits.num_classes)
        out = {"map50": s["map50"], "map": s["map"]}
        if self.splits.num_classes <= 10 and self.splits.num_classes > 1:
            per_class = s["per_class_ap50"]
            out["ap50"] = {name: per_class[i] if i < len(per_class) else None
                           for i, name in enumerate(self.splits.class_names)}
        return out

    def tflite_outputs(self, path, x):
        import tfkd.tflite as tfl

        return tfl.detections(str(path), x)

    def pictures(self, out_dir, examples):
        path = out_dir / "detections.png"
        names = [m for m in PICTURE_MODELS if m in examples["outputs"]]
        dets = {m: self.detections({k: v[:PICTURE_IMAGES] for k, v in
                                    examples["outputs"][m].items()}) for m in names}
        draw_detections(path, examples["x"][:PICTURE_IMAGES], examples["y"][:PICTURE_IMAGES],
                        dets, self.splits.class_names)
        return [(f"Test images: ground truth (green) and each model's detections scoring "
                 f"{SCORE_THRESHOLD} or more (red, with class and score).", path.name)]


def draw_detections(path, images, labels, detections, class_names):
    """A grid: one row per image; columns ground truth, then each model's detections."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    columns = ["ground truth"] + list(detections)
    rows = len(images)
    fig, axes = plt.subplots(rows, len(columns), figsize=(2.6 * len(columns), 2.6 * rows),
                             dpi=100, squeeze=False)
    for r in range(rows):
        h, w = images[r].shape[:2]
        for c, name in enumerate(columns):
            ax = axes[r, c]
            ax.imshow(np.asarray(images[r], np.uint8))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
            if name == "ground truth":
                boxes = [(b[:4], int(b[4]), None) for b in labels[r] if b[4] >= 0]
                color = "lime"
            else:
                d = detections[name]
                boxes = [(d["boxes"][r, k], int(d["classes"][r, k]), float(d["scores"][r, k]))
                         for k in range(int(d["count"][r]))
                         if d["scores"][r, k] >= SCORE_THRESHOLD]
                color = "red"
            for (y0, x0, y1, x1), cls, score in boxes:
                ax.add_patch(patches.Rectangle((x0 * w, y0 * h), (x1 - x0) * w, (y1 - y0) * h,
                                               fill=False, edgecolor=color, linewidth=1.2))
                text = class_names[cls] if 0 <= cls < len(class_names) else str(cls)
                if score is not None:
                    text += f" {score:.2f}"
                ax.text(x0 * w, y0 * h, text, fontsize=5, color="white",
                        bbox={"facecolor": color, "alpha": 0.6, "pad": 0.5, "linewidth": 0})
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv):
    del argv
    flow.main(lambda: DetectionTask(flags.FLAGS.anchor_strides, flags.FLAGS.max_detections))


if __name__ == "__main__":
    app.run(main)
