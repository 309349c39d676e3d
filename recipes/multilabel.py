"""Multi-label recipe: image-level labels of COCO128, sigmoid outputs, mAP.

    python -m recipes.multilabel --data=../shared/data/coco128 --image_size=64 \
        --output_dir=runs/coco128

`--data` is a folder holding `annotations.json` (schema of `../shared/data/coco128`: records
with `file`, `split` "train"/"val" and `image_labels`) and the images under
`images/<split>2017/` or beside it. Labels become multi-hot vectors; teacher and student
output one logit per class, the task loss is a binary cross-entropy, and the knowledge term
is `BinarySoftTargets` (per-class softened Bernoulli KL). Mean average precision (mAP over the
classes present in the test split) is the headline.
"""
import json
import pathlib

import numpy as np
from absl import app

from recipes import config
from recipes import flow
from recipes.task import ClassificationTask

config.define_flags(
    data=str(config.SHARED / "data" / "coco128"),
    image_size=64,
    teacher_arch="resnet_tiny", teacher_width=2.0, teacher_epochs=15,
    student="mobile_cnn", student_width=1.0,
    knowledge="binary_soft_targets", temperature=2.0,
    epochs=15, batch_size=32, augment=True,
    output_dir="runs/multilabel",
)


def load_annotated_images(folder, image_size=64):
    """COCO128-style folder -> `tfkd.data.Splits` with multi-hot labels (train / val as test)."""
    from PIL import Image

    from tfkd import data

    folder = pathlib.Path(folder)
    ann_path = folder / "annotations.json"
    if not ann_path.is_file():
        raise data.DataError(f"No annotations.json in '{folder}' (the multilabel recipe needs "
                             "the coco128 layout: annotations.json + images/).")
    ann = json.loads(ann_path.read_text())
    missing = [k for k in ("class_names", "images") if k not in ann]
    if missing:
        raise data.DataError(f"'{ann_path}' lacks {missing}; it has {sorted(ann)}.")
    names = list(ann["class_names"])
    splits = {}
    for split in ("train", "val"):
        records = [r for r in ann["images"] if r.get("split") == split]
        if not records:
            raise data.DataError(f"'{ann_path}' has no images with split={split!r}.")
        xs = np.zeros((len(records), image_size, image_size, 3), np.uint8)
        ys = np.zeros((len(records), len(names)), np.float32)
        for i, rec in enumerate(records):
            candidates = [folder / "images" / f"{split}2017" / rec["file"],
                          folder / "images" / rec["file"], folder / rec["file"]]
            path = next((p for p in candidates if p.is_file()), None)
            if path is None:
                raise data.DataError(f"Image {rec['file']!r} not found under '{folder}'.")
            with Image.open(path) as img:
                xs[i] = np.asarray(img.convert("RGB").resize((image_size, image_size),
                                                              Image.BILINEAR))
            labels = np.asarray(rec.get("image_labels", []), int)
            if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
                raise data.DataError(f"{rec['file']}: labels {labels.tolist()} outside the "
                                     f"{len(names)} classes.")
            ys[i, labels] = 1.0
        splits[split] = (xs, ys)
    return data.Splits(train=splits["train"], test=splits["val"], class_names=names,
                       source=str(folder))


def average_precision(y_true, score):
    """AP of one class: mean precision at the rank of each positive."""
    y_true = np.asarray(y_true).astype(bool)
    if not y_true.any():
        return float("nan")
    order = np.argsort(-np.asarray(score), kind="mergesort")
    hits = y_true[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def multilabel_scores(y_true, logits):
    y_true = np.asarray(y_true)
    logits = np.asarray(logits)
    present = np.flatnonzero(y_true.sum(0) > 0)
    aps = [average_precision(y_true[:, c], logits[:, c]) for c in present]
    pred = logits > 0
    tp = float(np.sum(pred & (y_true > 0)))
    f1 = 2 * tp / max(1.0, float(pred.sum() + (y_true > 0).sum()))
    return {"map": float(np.mean(aps)), "micro_f1": f1}


class MultilabelTask(ClassificationTask):
    """Image-level multi-hot labels: one logit per class, binary cross-entropy, mAP."""

    # One sigmoid per class in the file: MediaPipe's classifier then reports each class's
    # probability, as a multi-label app needs.
    output_meaning = "sigmoid_logits"
    client_activation = "sigmoid"

    name = "multilabel"
    headline = "map"
    default_image_size = 64

    def load(self, cfg):
        splits = load_annotated_images(cfg.data, cfg.image_size or self.default_image_size)
        return splits.subset(cfg.max_train or None, cfg.max_test or None)

    def loss(self):
        import keras

        return keras.losses.BinaryCrossentropy(from_logits=True)

    def metrics(self):
        import keras

        return [keras.metrics.BinaryAccuracy(threshold=0.0)]

    def scores(self, y_true, outputs):
        return multilabel_scores(y_true, outputs)


def main(argv):
    del argv
    flow.main(MultilabelTask)


if __name__ == "__main__":
    app.run(main)
