"""SSD anchors: the grid of prior boxes a single-stage detector predicts against.

`Anchors` is the box contract between a detector's two heads, its training targets and its
exported `.tflite`: the order of the anchors (level by level, then row, column and anchor
within a cell, the order in which the heads' `Reshape` lays them out), their centre-size
coordinates, and the box coder. The coder is the one of SSD and of TFLite's
`TFLite_Detection_PostProcess` op (scales y, x, h, w = 10, 10, 5, 5 by default):

    ty = (yc - yc_a) / h_a * 10     th = log(h / h_a) * 5     (tx, tw likewise)

so that `decode` here and the post-process op of the exported file turn the same head
outputs into the same boxes. Boxes are normalised `[ymin, xmin, ymax, xmax]` in [0, 1].

Training targets (`Anchors.encoder`): an anchor whose best IoU with a ground-truth box is at
least `match_threshold` is positive for that box, below `ignore_threshold` negative, in
between ignored; every ground-truth box also claims its best anchor, so that no object goes
without a positive. The targets are the standard Keras structure for a two-output model:
`y = {"class_logits": one-hot (anchors, classes), "box_regression": (anchors, 4)}` and
per-anchor `sample_weight`s that (a) leave ignored anchors out of the class loss and non-
positive anchors out of the box loss and (b) divide by the image's number of positives, the
normalisation of RetinaNet's focal loss. Keras' own losses then train the detector
(`detection_losses`): no custom loss class is needed.

Example:

    >>> import numpy as np, tfkd
    >>> anchors = tfkd.Anchors(image_size=(96, 96), strides=(16, 32))
    >>> anchors.grid_sizes, anchors.per_location, len(anchors)
    (((6, 6), (3, 3)), 6, 270)
    >>> y, w = anchors.encoder(num_classes=2)(
    ...     np.array([[0.1, 0.1, 0.6, 0.5], [0, 0, 0, 0]], "float32"), np.array([1, -1]))
    >>> y["class_logits"].shape, int(np.sum(y["class_logits"][:, 1]) >= 1)
    (TensorShape([270, 2]), 1)
    >>> boxes = anchors.decode(y["box_regression"][None])[0].numpy()
    >>> bool(np.allclose(boxes[np.argmax(w["box_regression"])], [0.1, 0.1, 0.6, 0.5], atol=1e-5))
    True
"""
import math

import keras
import numpy as np
import tensorflow as tf

BOX_SCALES = (10.0, 10.0, 5.0, 5.0)
_EPS = 1e-8


def level_size(size, stride):
    """A feature map's side after log2(stride) 'same'-padded stride-2 layers: ceil each time."""
    steps = int(round(math.log2(stride)))
    if 2 ** steps != stride:
        raise ValueError(f"Anchor strides must be powers of 2, got {stride}.")
    for _ in range(steps):
        size = -(-size // 2)
    return size


@keras.saving.register_keras_serializable(package="tfkd")
class Anchors:
    """The anchor grid of an SSD-style detector, its box coder and its target assignment.

    Args:
        image_size: (height, width) of the detector's input.
        strides: one feature level per stride (powers of 2), finest first.
        aspect_ratios: width / height of the anchors of each cell.
        scales: anchor sizes per cell, as multiples of `anchor_scale * stride`.
        anchor_scale: size of a level's base anchor, in strides (4: a stride-16 level's base
            anchor is 64 px).
        match_threshold / ignore_threshold: IoU at or above which an anchor is positive, below
            which it is background; in between it is ignored by the class loss.
        box_scales: the coder's (y, x, h, w) scales; TFLite's post-process takes the same.
    """

    def __init__(self, image_size=(192, 192), strides=(16, 32, 64),
                 aspect_ratios=(0.5, 1.0, 2.0), scales=(1.0, 2 ** 0.5), anchor_scale=3.0,
                 match_threshold=0.5, ignore_threshold=0.4, box_scales=BOX_SCALES):
        self.image_size = tuple(int(s) for s in image_size)
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"Anchors: image_size must be (height, width), got {image_size!r}.")
        self.strides = tuple(int(s) for s in strides)
        if not self.strides or list(self.strides) != sorted(set(self.strides)):
            raise ValueError(f"Anchors: strides must be increasing, e.g. (16, 32, 64); got "
                             f"{strides!r}.")
        self.aspect_ratios = tuple(float(a) for a in aspect_ratios)
        self.scales = tuple(float(s) for s in scales)
        self.anchor_scale = float(anchor_scale)
        if not 0 < ignore_threshold <= match_threshold <= 1:
            raise ValueError(
                f"Anchors: need 0 < ignore_threshold <= match_threshold <= 1, got "
                f"ignore_threshold={ignore_threshold}, match_threshold={match_threshold}.")
        self.match_threshold = float(match_threshold)
        self.ignore_threshold = float(ignore_threshold)
        self.box_scales = tuple(float(s) for s in box_scales)
        h, w = self.image_size
        self.grid_sizes = tuple((level_size(h, s), level_size(w, s)) for s in self.strides)
        self._center_size = self._build()

    @property
    def per_location(self):
        """Anchors per feature-map cell (the heads predict this many boxes per cell)."""
        return len(self.aspect_ratios) * len(self.scales)

    def __len__(self):
        return len(self._center_size)

    def level_slices(self):
        """[(start, stop)] of each level's anchors in the flat anchor axis."""
        out, start = [], 0
        for gh, gw in self.grid_sizes:
            stop = start + gh * gw * self.per_location
            out.append((start, stop))
            start = stop
        return out

    def _build(self):
        h, w = self.image_size
        rows = []
        for stride, (gh, gw) in zip(self.strides, self.grid_sizes):
            cy = (np.arange(gh) + 0.5) / gh
            cx = (np.arange(gw) + 0.5) / gw
            shapes = []
            for scale in self.scales:
                for ratio in self.aspect_ratios:
                    base = self.anchor_scale * stride * scale
                    shapes.append((base / math.sqrt(ratio) / h, base * math.sqrt(ratio) / w))
            shapes = np.asarray(shapes)  # (per_location, 2): h, w
            yy, xx = np.meshgrid(cy, cx, indexing="ij")
            centers = np.stack([yy, xx], -1).reshape(-1, 1, 2)  # row-major cells
            cell = np.concatenate([np.broadcast_to(centers, (len(centers), len(shapes), 2)),
                                   np.broadcast_to(shapes[None], (len(centers), len(shapes), 2))],
                                  -1)
            rows.append(cell.reshape(-1, 4))
        return np.concatenate(rows).astype("float32")

    def center_size(self):
        """(anchors, 4) float32 [ycenter, xcenter, height, width]: the post-process op's input."""
        return self._center_size.copy()

    def corners(self):
        """(anchors, 4) float32 [ymin, xmin, ymax, xmax]."""
        c = self._center_size
        return np.concatenate([c[:, :2] - c[:, 2:] / 2, c[:, :2] + c[:, 2:] / 2], -1)

    # -- the coder ----------------------------------------------------------------------
    def encode_boxes(self, boxes):
        """Corner boxes (..., anchors, 4) -> regression targets against each anchor."""
        a = tf.constant(self._center_size)
        boxes = tf.cast(boxes, tf.float32)
        hw = tf.maximum(boxes[..., 2:] - boxes[..., :2], _EPS)
        center = (boxes[..., :2] + boxes[..., 2:]) / 2
        sy, sx, sh, sw = self.box_scales
        t_center = (center - a[:, :2]) / a[:, 2:] * tf.constant([sy, sx])
        t_size = tf.math.log(hw / a[:, 2:]) * tf.constant([sh, sw])
        return tf.concat([t_center, t_size], -1)

    def decode(self, box_regression):
        """Head outputs (batch, anchors, 4) -> corner boxes (batch, anchors, 4), as TFLite does."""
        a = tf.constant(self._center_size)
        t = tf.cast(box_regression, tf.float32)
        sy, sx, sh, sw = self.box_scales
        center = t[..., :2] / tf.constant([sy, sx]) * a[:, 2:] + a[:, :2]
        size = tf.exp(t[..., 2:] / tf.constant([sh, sw])) * a[:, 2:]
        return tf.concat([center - size / 2, center + size / 2], -1)

    # -- training targets ---------------------------------------------------------------
    def encoder(self, num_classes):
        """A tf.data-friendly `encode(boxes, classes) -> (y, sample_weight)` for one image.

        `boxes` (M, 4) normalised corners, `classes` (M,) int with -1 on padding rows. See the
        module docstring for what `y` and `sample_weight` hold.
        """
        num_classes = int(num_classes)
        if num_classes < 1:
            raise ValueError(f"Anchors.encoder: num_classes must be >= 1, got {num_classes}.")

        def encode(boxes, classes):
            return self.assign(boxes, classes, num_classes)

        return encode

    def assign(self, boxes, classes, num_classes):
        boxes = tf.reshape(tf.cast(boxes, tf.float32), (-1, 4))
        classes = tf.reshape(tf.cast(classes, tf.int32), (-1,))
        valid = classes >= 0
        n = len(self)
        iou = pairwise_iou(tf.constant(self.corners()), boxes)  # (N, M)
        iou = tf.where(valid[None, :], iou, -1.0)
        has_boxes = tf.reduce_any(valid)
        best_iou = tf.where(has_boxes, tf.reduce_max(
            tf.concat([iou, -tf.ones((n, 1))], 1), axis=1), -1.0)
        best_box = tf.argmax(tf.concat([iou, -2 * tf.ones((n, 1))], 1), axis=1,
                             output_type=tf.int32)
        # Every real box claims the anchor it overlaps most, even below the threshold.
        m = tf.shape(boxes)[0]
        claim = tf.argmax(tf.where(valid[None, :], iou, -2.0), axis=0, output_type=tf.int32)
        claim_ok = tf.logical_and(valid, tf.reduce_max(
            tf.concat([iou, -tf.ones((1, m))], 0), axis=0) > 0)
        forced_box = tf.tensor_scatter_nd_update(
            -tf.ones((n,), tf.int32), tf.boolean_mask(claim, claim_ok)[:, None],
            tf.boolean_mask(tf.range(m), claim_ok))
        forced = forced_box >= 0
        best_box = tf.where(forced, forced_box, best_box)
        positive = tf.logical_or(forced, best_iou >= self.match_threshold)
        positive = tf.logical_and(positive, best_box < m)
        negative = tf.logical_and(tf.logical_not(positive), best_iou < self.ignore_threshold)
        safe_box = tf.minimum(best_box, tf.maximum(m - 1, 0))
        matched_cls = tf.gather(tf.concat([classes, [-1]], 0), tf.where(positive, safe_box, m))
        one_hot = tf.one_hot(tf.where(positive, matched_cls, -1), num_classes)
        matched = tf.gather(tf.concat([boxes, tf.zeros((1, 4))], 0),
                            tf.where(positive, safe_box, m))
        targets = tf.where(positive[:, None], self.encode_boxes(matched), 0.0)
        num_pos = tf.maximum(tf.reduce_sum(tf.cast(positive, tf.float32)), 1.0)
        # Keras' losses average over anchors (and over classes / coordinates); these weights
        # turn that average into RetinaNet's sum over anchors and classes / positives.
        scale = float(n) / num_pos
        cls_weight = tf.cast(tf.logical_or(positive, negative), tf.float32) * scale \
            * float(num_classes)
        box_weight = tf.cast(positive, tf.float32) * scale
        y = {"class_logits": one_hot, "box_regression": targets}
        weights = {"class_logits": cls_weight, "box_regression": box_weight}
        return y, weights

    # -- detections ---------------------------------------------------------------------
    def detect(self, class_logits, box_regression, max_detections=100, score_threshold=0.01,
               iou_threshold=0.5):
        """Boxes, classes, scores and count per image, as the exported post-process gives.

        The same algorithm as TFLite_Detection_PostProcess with `use_regular_nms=False`: each
        anchor keeps its best class, then one class-agnostic NMS. Returns NumPy arrays
        `boxes (B, K, 4)`, `classes (B, K)`, `scores (B, K)`, `count (B,)`, K =
        `max_detections`, padded with zeros past `count`.
        """
        scores_all = tf.sigmoid(tf.cast(class_logits, tf.float32))
        boxes_all = self.decode(box_regression)
        out = {"boxes": [], "classes": [], "scores": [], "count": []}
        for scores, boxes in zip(scores_all.numpy(), boxes_all.numpy()):
            best = scores.max(-1)
            cls = scores.argmax(-1)
            keep = tf.image.non_max_suppression(
                boxes, best, max_detections, iou_threshold=iou_threshold,
                score_threshold=score_threshold).numpy()
            k = len(keep)
            pad = lambda v, shape: np.concatenate([v, np.zeros(shape, v.dtype)])
            out["boxes"].append(pad(np.clip(boxes[keep], 0, 1), (max_detections - k, 4)))
            out["classes"].append(pad(cls[keep].astype("float32"), (max_detections - k,)))
            out["scores"].append(pad(best[keep], (max_detections - k,)))
            out["count"].append(k)
        return {k: np.asarray(v) for k, v in out.items()}

    def get_config(self):
        return {"image_size": self.image_size, "strides": self.strides,
                "aspect_ratios": self.aspect_ratios, "scales": self.scales,
                "anchor_scale": self.anchor_scale, "match_threshold": self.match_threshold,
                "ignore_threshold": self.ignore_threshold, "box_scales": self.box_scales}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return (f"Anchors(image_size={self.image_size}, strides={self.strides}, "
                f"{len(self)} anchors)")


def pairwise_iou(a, b):
    """IoU of every box of `a` (N, 4) with every box of `b` (M, 4), corner format -> (N, M)."""
    a = tf.cast(a, tf.float32)
    b = tf.cast(b, tf.float32)
    lo = tf.maximum(a[:, None, :2], b[None, :, :2])
    hi = tf.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = tf.reduce_prod(tf.maximum(hi - lo, 0.0), -1)
    area = lambda x: tf.reduce_prod(tf.maximum(x[:, 2:] - x[:, :2], 0.0), -1)
    union = area(a)[:, None] + area(b)[None, :] - inter
    return inter / tf.maximum(union, _EPS)


def detection_losses(alpha=0.25, gamma=2.0, huber_delta=1.0):
    """The `compile(loss=...)` dict of an SSD detector trained on `Anchors.encoder` targets.

    Keras' own `BinaryFocalCrossentropy` (RetinaNet's focal loss, alpha-balanced) on the
    class logits and `Huber` on the box regressions; the encoder's sample weights do the
    ignoring and the normalisation by positives.
    """
    return {
        "class_logits": keras.losses.BinaryFocalCrossentropy(
            apply_class_balancing=True, alpha=alpha, gamma=gamma, from_logits=True),
        "box_regression": keras.losses.Huber(delta=huber_delta),
    }
