"""COCO box mAP of detections, with pycocotools' own evaluator.

`coco_map` takes what a detector gives (the `.tflite`'s `TFLite_Detection_PostProcess`
outputs, `tfkd.Anchors.detect`, `tfkd.tflite.detections`) and padded ground truth (what
`tfkd.data.load_detection` returns), builds the COCO ground-truth and result structures in
memory (no json files) and runs `pycocotools.cocoeval.COCOeval` on them, its prints silenced.
The figures are therefore COCO's by construction: greedy matching by score per image and
class, IoU thresholds 0.50:0.05:0.95, 101-point interpolated precision, classes without
ground truth left out of the means.

Box conventions: boxes are normalised `[ymin, xmin, ymax, xmax]`; they become COCO's pixel
`[x, y, width, height]` by the image sizes. IoU does not depend on that scale, so mAP does
not either; only COCO's small / medium / large split (areas below 32^2, up to 96^2 and above
96^2 *pixels*) does: with `image_sizes` those are pixels of the images given (pass the
original sizes, e.g. `DetectionSplit.sizes`, to get COCO's own split; `evaluate` defaults to
the model's input size), without them the split is not reported (None). Ground-truth areas
are box areas (COCO's own use the segmentation mask area; box-only data sets, ours, have no
mask).

Example:

    >>> import numpy as np, tfkd.tflite as tfl
    >>> gt_boxes = np.array([[[0.1, 0.1, 0.5, 0.5], [0, 0, 0, 0]]])    # 1 image, 1 box + pad
    >>> gt_classes = np.array([[0, -1]])
    >>> dets = {"boxes": np.array([[[0.1, 0.1, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]]]),
    ...         "classes": np.array([[0, 0]]), "scores": np.array([[0.9, 0.4]]),
    ...         "count": np.array([2])}
    >>> r = tfl.coco_map(gt_boxes, gt_classes, dets, image_sizes=(96, 96))
    >>> round(r["map"], 3), round(r["map50"], 3), [round(v, 3) for v in r["per_class_ap50"]]
    (1.0, 1.0, [1.0])
"""
from __future__ import annotations

import contextlib
import io

import numpy as np

from .errors import TFLiteError

# COCOeval's area ranges, in its order: all, small, medium, large.
_AREAS = ("all", "small", "medium", "large")


def _as_sizes(image_sizes, n):
    if image_sizes is None:
        return np.ones((n, 2), np.float64), False
    sizes = np.asarray(image_sizes, np.float64)
    if sizes.shape == (2,):
        sizes = np.tile(sizes, (n, 1))
    if sizes.shape != (n, 2) or np.any(sizes <= 0):
        raise TFLiteError(
            f"image_sizes must be one (height, width) or one per image, ({n}, 2), positive; "
            f"got shape {np.asarray(image_sizes).shape}.")
    return sizes, True


def _xywh(boxes, size):
    """Normalised [ymin, xmin, ymax, xmax] -> pixel [x, y, w, h] in a (height, width) frame."""
    h, w = size
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack([b[:, 1] * w, b[:, 0] * h, (b[:, 3] - b[:, 1]) * w,
                     (b[:, 2] - b[:, 0]) * h], -1)


def _check_detections(detections, n):
    if not isinstance(detections, dict) or not {"boxes", "classes", "scores"} <= set(detections):
        got = sorted(detections) if isinstance(detections, dict) else type(detections).__name__
        raise TFLiteError(
            "detections must be a dict with 'boxes' (N, K, 4), 'classes' (N, K), 'scores' "
            f"(N, K) and 'count' (N,) (what tfkd.tflite.detections returns); got {got}.")
    boxes = np.asarray(detections["boxes"], np.float64)
    classes = np.asarray(detections["classes"])
    scores = np.asarray(detections["scores"], np.float64)
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or classes.shape != boxes.shape[:2] or \
            scores.shape != boxes.shape[:2] or len(boxes) != n:
        raise TFLiteError(
            f"detections for {n} images need boxes ({n}, K, 4), classes and scores ({n}, K); "
            f"got boxes {boxes.shape}, classes {classes.shape}, scores {scores.shape}.")
    count = detections.get("count")
    count = np.full(n, boxes.shape[1]) if count is None else \
        np.round(np.nan_to_num(np.asarray(count, np.float64))).reshape(n).astype(np.int64)
    count = np.clip(count, 0, boxes.shape[1])
    # Rows past `count` are padding, whatever they hold (a file's may be uninitialised).
    past = np.arange(boxes.shape[1])[None, :] >= count[:, None]
    classes = np.where(past, 0, np.nan_to_num(np.asarray(classes, np.float64), nan=-1))
    return boxes, np.round(classes).astype(np.int64), scores, count


def _ground_truth(gt_boxes, gt_classes):
    boxes = np.asarray(gt_boxes, np.float64)
    classes = np.asarray(gt_classes)
    if boxes.ndim == 2 and classes.ndim == 1:  # a single image
        boxes, classes = boxes[None], classes[None]
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or classes.shape != boxes.shape[:2]:
        raise TFLiteError(
            "Ground truth must be gt_boxes (N, M, 4) normalised [ymin, xmin, ymax, xmax] and "
            "gt_classes (N, M) with -1 on padding rows (as tfkd.data.load_detection gives); "
            f"got {boxes.shape} and {classes.shape}.")
    return boxes, np.round(classes).astype(np.int64)


def coco_map(gt_boxes, gt_classes, detections, image_sizes=None, class_names=None,
             classes=None, max_detections=100, num_classes=None):
    """COCO mAP of detections against padded ground truth, by pycocotools' COCOeval.

    Args:
      gt_boxes: (N, M, 4) normalised [ymin, xmin, ymax, xmax] per image, padded.
      gt_classes: (N, M) class ids `0..C-1`, -1 on padding rows.
      detections: dict `boxes` (N, K, 4) normalised [ymin, xmin, ymax, xmax], `classes`
        (N, K), `scores` (N, K), `count` (N,) (the first `count` rows of each image count):
        what `tfkd.Anchors.detect`, the `.tflite` (`tfkd.tflite.detections`) and the Keras
        export model give.
      image_sizes: (height, width) in pixels, one for all images or (N, 2); None: the size
        split (`map_small` / `map_medium` / `map_large`) is not reported. mAP does not depend
        on it.
      class_names: names of the C classes (sets C; default: the largest id seen + 1);
        `per_class` then maps names to figures.
      classes: a subset of class ids (or names) that `map` / `map50` / `map75` average over
        (e.g. the old or the new classes of a class-incremental run); default: all. The
        per-class lists always hold every class.
      max_detections: detections per image COCO keeps, highest scores first (its 100).
      num_classes: C, when class_names is not given.

    Returns:
      dict: `map` (AP@[.5:.95]), `map50`, `map75`, `map_small` / `map_medium` /
      `map_large` (None without image_sizes, or with no ground truth of that size),
      `per_class_ap` and `per_class_ap50` (lists indexed by class id; None for a class with
      no ground truth, which COCO leaves out of the means), `per_class` ({name: {"ap",
      "ap50"}}, with class_names), `num_images`, `num_gt`, `num_detections`. A mean over no
      class (no ground truth at all) is None.

    Raises:
      TFLiteError: shapes that do not fit, a class id outside `class_names`, an unknown
        `classes` entry. ImportError with the install line when pycocotools is missing.
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:  # pragma: no cover
        raise ImportError("coco_map needs pycocotools: pip install pycocotools") from e

    boxes, labels = _ground_truth(gt_boxes, gt_classes)
    n = len(boxes)
    d_boxes, d_classes, d_scores, d_count = _check_detections(detections, n)
    sizes, has_sizes = _as_sizes(image_sizes, n)
    valid = labels >= 0
    seen = [labels[valid]] + [d_classes[i, :d_count[i]] for i in range(n)]
    seen = np.concatenate(seen) if seen else np.zeros(0, np.int64)
    if np.any(seen < 0):
        raise TFLiteError(f"Detections hold negative class ids {np.unique(seen[seen < 0])[:5]}:"
                          " class ids are 0..C-1 (padding rows past `count` are ignored).")
    if class_names is not None:
        if num_classes is not None and int(num_classes) != len(class_names):
            raise TFLiteError(f"num_classes={num_classes} but {len(class_names)} class_names.")
        num_classes = len(class_names)
    elif num_classes is None:
        num_classes = int(seen.max()) + 1 if seen.size else 0
    num_classes = int(num_classes)
    if seen.size and seen.max() >= num_classes:
        raise TFLiteError(
            f"Class id {int(seen.max())} is outside the {num_classes} classes: pass the "
            "class_names (or num_classes) of every class the model predicts.")

    images = [{"id": i + 1, "height": float(sizes[i, 0]), "width": float(sizes[i, 1])}
              for i in range(n)]
    categories = [{"id": c + 1, "name": str(class_names[c]) if class_names is not None
                   else str(c)} for c in range(num_classes)]
    annotations = []
    for i in range(n):
        xywh = _xywh(boxes[i][valid[i]], sizes[i])
        for b, c in zip(xywh, labels[i][valid[i]]):
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                "category_id": int(c) + 1, "bbox": b.tolist(),
                                "area": float(b[2] * b[3]), "iscrowd": 0})
    results = []
    for i in range(n):
        k = int(d_count[i])
        xywh = _xywh(d_boxes[i, :k], sizes[i])
        for b, c, s in zip(xywh, d_classes[i, :k], d_scores[i, :k]):
            # pycocotools' loadRes fields: area = w * h, ids from 1, no crowd.
            results.append({"id": len(results) + 1, "image_id": i + 1,
                            "category_id": int(c) + 1, "bbox": b.tolist(),
                            "area": float(b[2] * b[3]), "score": float(s), "iscrowd": 0})

    out = {"num_images": n, "num_gt": len(annotations), "num_detections": len(results)}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "categories": categories, "annotations": annotations}
        gt.createIndex()
        dt = COCO()
        dt.dataset = {"images": images, "categories": categories, "annotations": results}
        dt.createIndex()
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.maxDets = [1, 10, int(max_detections)]
        if num_classes:
            ev.evaluate()
            ev.accumulate()
    # precision: (iou thresholds T, recall points R, classes K, areas A, max dets M), -1 where
    # a class has no ground truth (in that area range).
    precision = ev.eval["precision"] if num_classes else np.zeros((10, 101, 0, 4, 3))
    iou = np.asarray(ev.params.iouThrs)
    t50, t75 = int(np.argmin(np.abs(iou - 0.5))), int(np.argmin(np.abs(iou - 0.75)))

    def ap(p):  # mean over recall points (and thresholds) of one class; None when absent
        p = p[p > -1]
        return float(np.mean(p)) if p.size else None

    per_ap = [ap(precision[:, :, c, 0, -1]) for c in range(num_classes)]
    per_ap50 = [ap(precision[t50, :, c, 0, -1]) for c in range(num_classes)]
    per_ap75 = [ap(precision[t75, :, c, 0, -1]) for c in range(num_classes)]
    subset = list(range(num_classes)) if classes is None else \
        [_class_id(c, class_names, num_classes) for c in classes]

    def mean(values):
        v = [values[c] for c in subset if values[c] is not None]
        return float(np.mean(v)) if v else None

    out.update(map=mean(per_ap), map50=mean(per_ap50), map75=mean(per_ap75))
    for a, name in enumerate(_AREAS[1:], start=1):
        out[f"map_{name}"] = mean([ap(precision[:, :, c, a, -1]) for c in range(num_classes)]) \
            if has_sizes else None
    out["per_class_ap"] = per_ap
    out["per_class_ap50"] = per_ap50
    if class_names is not None:
        out["per_class"] = {str(class_names[c]): {"ap": per_ap[c], "ap50": per_ap50[c]}
                            for c in range(num_classes)}
    return out


def _class_id(c, class_names, num_classes):
    if isinstance(c, str):
        names = [str(x) for x in class_names] if class_names is not None else []
        if c not in names:
            raise TFLiteError(f"classes= names {c!r}, which is not one of class_names "
                              f"{names}.")
        return names.index(c)
    c = int(c)
    if not 0 <= c < num_classes:
        raise TFLiteError(f"classes= holds class id {c}, outside 0..{num_classes - 1}.")
    return c


__all__ = ["coco_map"]
