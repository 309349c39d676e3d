"""Scores of dense (per-pixel) predictions: mean IoU, pixel accuracy and IoU per class.

The counting is Keras': one `keras.metrics.MeanIoU` accumulates the confusion matrix, fed in
chunks of about a million pixels so that a whole test set (CamVid: 233 images of 90x120x11
logits) never becomes one tensor, and the IoU of each class comes from
`keras.metrics.IoU(target_class_ids=[c])` on that same matrix. The same function scores the
Keras model's outputs and the `.tflite` file's, so the two figures are comparable digit for
digit: counts are integers, the result does not depend on the chunking.

Example:

    >>> import numpy as np, tfkd.tflite as tfl
    >>> labels = np.array([[[0, 1], [1, 2]]])               # (N, H, W) class ids
    >>> logits = np.eye(3)[np.array([[[0, 1], [2, 2]]])]    # (N, H, W, C) scores
    >>> s = tfl.segmentation_scores(labels, logits)
    >>> round(s["miou"], 4), s["pixel_accuracy"], [round(v, 2) for v in s["per_class_iou"]]
    (0.6667, 0.75, [1.0, 0.5, 0.5])
"""
from __future__ import annotations

import numbers

import numpy as np

from .errors import RepresentativeDataError, TFLiteError

# Metric names `evaluate` computes with `segmentation_scores` (dense outputs only).
DENSE_METRICS = ("miou", "pixel_accuracy", "per_class_iou")

# Pixels per MeanIoU update: bounds the argmax buffer (8 MB of int64 ids), and keeps Keras'
# per-update tensors small; the logits themselves are only ever sliced, never copied.
_CHUNK_PIXELS = 1 << 20


def _is_integral(a):
    return a.dtype.kind in "iub" or (a.dtype.kind == "f" and np.array_equal(a, np.round(a)))


class _ConfusionCounter:
    """A Keras MeanIoU fed with validated (labels, predicted ids) chunks."""

    def __init__(self, num_classes, ignore_class=None):
        import keras

        self.num_classes = num_classes
        self.ignore_class = ignore_class
        # int64 counts: int32 (Keras' default) would overflow past 2**31 pixels of one cell,
        # which a large test set (Cityscapes' 500 x 2 Mpx) approaches.
        self.metric = keras.metrics.MeanIoU(num_classes, ignore_class=ignore_class,
                                            dtype="int64")

    def add(self, labels, outputs, scores):
        """labels (n, ...), outputs (n, ..., C) scores or (n, ...) ids, validated here."""
        ids = np.argmax(outputs, axis=-1) if scores else self._ids(outputs)
        labels = self._labels(labels)
        self.metric.update_state(labels.reshape(-1), ids.reshape(-1))

    def _ids(self, ids):
        if not _is_integral(ids):
            raise TFLiteError(
                f"Outputs of shape {ids.shape} have the labels' rank, so they are read as class "
                f"ids, but they hold non-integer values ({ids.dtype}): pass per-pixel scores "
                "(N, H, W, C) or integer ids (N, H, W).")
        ids = ids.astype(np.int64)
        bad = (ids < 0) | (ids >= self.num_classes)
        if bad.any():
            raise TFLiteError(
                f"Predicted class ids {np.unique(ids[bad])[:5].tolist()} are outside "
                f"0..{self.num_classes - 1}: pass num_classes= the number of classes the model "
                "predicts.")
        return ids

    def _labels(self, labels):
        if not _is_integral(labels):
            raise RepresentativeDataError(
                f"Labels of dtype {labels.dtype} hold non-integer values: segmentation labels "
                "are class ids per pixel (N, H, W); resize masks with nearest-neighbour "
                "interpolation, not bilinear.")
        labels = labels.astype(np.int64)
        bad = (labels < 0) | (labels >= self.num_classes)
        if self.ignore_class is not None:
            bad &= labels != self.ignore_class
        if bad.any():
            # Keras' MeanIoU would drop these pixels without a word; a label id the caller did
            # not declare is far more often a forgotten void id than an intent.
            values = np.unique(labels[bad])[:5].tolist()
            raise RepresentativeDataError(
                f"Labels hold class ids {values} outside 0..{self.num_classes - 1}"
                + (f" and other than ignore_class={self.ignore_class}"
                   if self.ignore_class is not None else "")
                + ": pass ignore_class=<the void id> to leave those pixels out (CamVid: "
                "num_classes=11, ignore_class=11), or num_classes= to count them as classes.")
        return labels

    def scores(self):
        import keras

        cm_var = next(v for v in self.metric.variables if "confusion" in v.name)
        cm = np.asarray(cm_var.numpy(), dtype=np.int64)  # rows: labels, columns: predictions
        total = int(cm.sum())
        if total == 0:
            raise RepresentativeDataError(
                "No labelled pixel to score: every label equals ignore_class="
                f"{self.ignore_class} (or the data is empty). Check the labels and the void id.")
        union = cm.sum(axis=0) + cm.sum(axis=1) - np.diag(cm)
        # An in-range ignored class never has a label, so it would only collect false
        # positives; it is no class of the task and is left out like an absent one.
        skip = self.ignore_class if self.ignore_class is not None and \
            0 <= self.ignore_class < self.num_classes else None
        per_class = []
        for c in range(self.num_classes):
            if union[c] == 0 or c == skip:
                per_class.append(None)
                continue
            iou = keras.metrics.IoU(self.num_classes, target_class_ids=[c], dtype="int64")
            per_class.append(float(np.asarray(iou.stateless_result([cm]))))
        if skip is None:
            miou = float(np.asarray(self.metric.result()))
        else:
            targets = [c for c in range(self.num_classes) if c != skip]
            mean = keras.metrics.IoU(self.num_classes, target_class_ids=targets, dtype="int64")
            miou = float(np.asarray(mean.stateless_result([cm])))
        return {"miou": miou, "pixel_accuracy": float(np.trace(cm) / total),
                "per_class_iou": per_class}


def _shapes(y, out):
    """(labels, is_scores, channels): checks that labels (N, H, W[, 1]) and outputs
    (N, H, W, C) scores or (N, H, W) ids fit together."""
    if y.ndim == out.ndim and y.ndim >= 4 and y.shape[-1] == 1 and out.shape[-1] != 1:
        y = y[..., 0]  # (N, H, W, 1) masks, as image loaders give them
    if y.ndim < 3:
        raise RepresentativeDataError(
            f"Labels of shape {y.shape} are not dense: segmentation labels are class ids per "
            "pixel, (N, H, W). For one label per sample use evaluate's 'accuracy'.")
    if out.ndim == y.ndim + 1:
        if out.shape[:-1] != y.shape:
            raise RepresentativeDataError(
                f"Outputs {out.shape} do not match labels {y.shape} pixel for pixel: resize "
                "the logits to the labels' size (bilinear) before scoring, or the labels "
                "(nearest) to the model's output size.")
        if out.shape[-1] == 1:
            raise TFLiteError(
                f"Outputs {out.shape} have a single channel, which is not a choice of class: "
                "for a binary mask threshold it first, e.g. (probabilities > 0.5).astype(int), "
                "and pass the ids with num_classes=2.")
        return y, True, out.shape[-1]
    if out.ndim == y.ndim:
        if out.shape != y.shape:
            raise RepresentativeDataError(
                f"Predicted ids {out.shape} do not match labels {y.shape} pixel for pixel.")
        return y, False, None
    raise RepresentativeDataError(
        f"Outputs of shape {out.shape} fit labels of shape {y.shape} neither as scores "
        "(N, H, W, C) nor as class ids (N, H, W).")


def _num_classes(num_classes, channels):
    if num_classes is None:
        if channels is None:
            raise TFLiteError("Outputs are class ids, so the number of classes is unknown: "
                              "pass num_classes=.")
        return int(channels)
    if not isinstance(num_classes, numbers.Integral) or isinstance(num_classes, bool) or \
            num_classes < 1:
        raise TFLiteError(f"num_classes must be a positive integer, not {num_classes!r}.")
    if channels is not None and num_classes < channels:
        raise TFLiteError(
            f"num_classes={num_classes} but the outputs have {channels} channels: the argmax "
            f"may pick a class >= {num_classes}. Pass num_classes={channels} (or leave it "
            "out), and name the void id with ignore_class=.")
    return int(num_classes)


def check_ignore_class(ignore_class):
    if ignore_class is not None and (not isinstance(ignore_class, numbers.Integral) or
                                     isinstance(ignore_class, bool)):
        raise TFLiteError(f"ignore_class must be an integer class id or None, not "
                          f"{ignore_class!r}.")
    return None if ignore_class is None else int(ignore_class)


def segmentation_scores(y_true, outputs, num_classes=None, ignore_class=None) -> dict:
    """Mean IoU, pixel accuracy and IoU per class of dense predictions, counted by Keras.

    Args:
      y_true: class ids per pixel, (N, H, W) (or (N, H, W, 1)); numpy arrays or tensors.
      outputs: per-pixel logits or probabilities (N, H, W, C), argmaxed here, or class ids
        already argmaxed (N, H, W).
      num_classes: how many classes; defaults to C (required for ids). It must be at least C.
      ignore_class: a label id whose pixels are left out of every figure (the void class; for
        CamVid num_classes=11 and ignore_class=11, an id == num_classes). Pixels that carry
        it count nowhere, whatever the model predicts there.

    Returns:
      {"miou": float, "pixel_accuracy": float, "per_class_iou": [float or None per class]}.
      A class absent from both labels and predictions has IoU None and is left out of the
      mean, which is what `keras.metrics.MeanIoU` does (it divides by the classes whose union
      is not empty): with an ignore_class outside 0..num_classes-1, "miou" *is* MeanIoU's
      result. An ignore_class inside that range is no class of the task: its IoU is None and
      it is left out of the mean, where MeanIoU would keep it at IoU 0 whenever the model
      predicts it. Pixel accuracy is correct pixels / labelled pixels.

    Raises:
      RepresentativeDataError: labels and outputs do not match pixel for pixel, labels hold
        ids outside 0..num_classes-1 that are not ignore_class (Keras' MeanIoU would drop
        them silently: here it is an error, since it is usually a forgotten void id), or no
        labelled pixel is left.
      TFLiteError: num_classes smaller than C, ids without num_classes, one-channel outputs.

    Example:

        >>> import numpy as np, tfkd.tflite as tfl
        >>> y = np.array([[[0, 1, 3]]])                  # 3 = void, with 3 classes
        >>> s = tfl.segmentation_scores(y, np.array([[[0, 0, 2]]]), num_classes=3,
        ...                             ignore_class=3)  # the 2 predicted on void is not counted
        >>> s["pixel_accuracy"], [None if v is None else round(v, 4) for v in s["per_class_iou"]]
        (0.5, [0.5, 0.0, None])
    """
    y = np.asarray(y_true)
    out = np.asarray(outputs)
    y, scores, channels = _shapes(y, out)
    counter = _ConfusionCounter(_num_classes(num_classes, channels),
                                check_ignore_class(ignore_class))
    if not len(y):
        raise RepresentativeDataError("No samples to score: the labels are empty.")
    step = max(1, _CHUNK_PIXELS // max(1, int(np.prod(y.shape[1:]))))
    for i in range(0, len(y), step):
        counter.add(y[i:i + step], out[i:i + step], scores)
    return counter.scores()


__all__ = ["segmentation_scores", "DENSE_METRICS"]
