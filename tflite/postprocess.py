"""SSD post-processing as TFLite's `TFLite_Detection_PostProcess` custom op, from Keras.

The op (decode anchor regressions with the SSD box coder, then non-maximum suppression) is
what LiteRT's object-detection examples, MediaPipe's `ObjectDetector` and Coral's detection
examples expect at the end of a detector: four float outputs, `boxes` (1, K, 4) as
[ymin, xmin, ymax, xmax] normalised, `classes` (1, K), `scores` (1, K) and `count` (1,).

How it gets into the file: `DetectionPostProcess` is a Keras layer whose `call` runs a
`tf.function` annotated with `experimental_implements` naming the op and its attributes (the
mechanism of the TensorFlow Object Detection API's TF2 TFLite export; we write our own). The
converter's composite-function pass replaces the whole function by the custom op, reading
the attributes into its options; the function's body only gives TensorFlow shapes (zeros:
it is never run in the file). In Keras the layer runs a real decode + NMS instead
(`tf.image.non_max_suppression` on each anchor's best class, as the op's "fast" NMS does),
so that the export model predicts what the file will. The op takes float inputs: the
converter puts a DEQUANTIZE in front of it, and that is where an int8 network ends.

One difference: the op does not clip its boxes (a box decoded past the border keeps
coordinates < 0 or > 1, measured), the Keras layer clips them to [0, 1] after NMS (as
`tfkd.Anchors.detect` does). NMS runs on the unclipped boxes in both, so the detections are
the same once clipped: `tfkd.tflite.detections` clips the file's boxes by default.

Example:

    >>> import numpy as np, keras, tfkd.tflite as tfl
    >>> anchors = np.array([[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5]], "float32")
    >>> scores = keras.Input((2, 1), batch_size=1)
    >>> boxes = keras.Input((2, 4), batch_size=1)
    >>> post = tfl.DetectionPostProcess(anchors, num_classes=1, max_detections=2)
    >>> out = post([boxes, scores])
    >>> sorted(out)
    ['boxes', 'classes', 'count', 'scores']
"""
from __future__ import annotations

import keras
import numpy as np

OP_NAME = "TFLite_Detection_PostProcess"
OUTPUTS = ("boxes", "classes", "scores", "count")


def _implements(attrs):
    """The NameAttrList text the converter's composite-function pass parses."""
    parts = [f'name: "{OP_NAME}"']
    for key, value in attrs.items():
        if isinstance(value, bool):
            v = f"b: {str(value).lower()}"
        elif isinstance(value, int):
            v = f"i: {value}"
        else:
            v = f"f: {float(value)!r}"
        parts.append(f'attr {{ key: "{key}" value {{ {v} }} }}')
    return " ".join(parts)


@keras.saving.register_keras_serializable(package="tfkd.tflite")
class DetectionPostProcess(keras.layers.Layer):
    """Decode + NMS of an SSD head, exported as `TFLite_Detection_PostProcess`.

    Args:
        anchors: (anchors, 4) array of [ycenter, xcenter, height, width], normalised (what
            `tfkd.Anchors.center_size()` returns), in the order of the heads' outputs.
        num_classes: object classes of the score input (no background column).
        max_detections: K, the number of detections each output holds.
        score_threshold: detections scoring below it are dropped (MediaPipe and Coral apply
            their own, higher, threshold on top).
        iou_threshold: NMS overlap above which the lower-scoring box is suppressed.
        box_scales: the box coder's (y, x, h, w) scales.

    Called on `[box_regression (1, anchors, 4), scores (1, anchors, classes)]` (scores are
    probabilities: apply the sigmoid first), it returns a dict of the four outputs.
    """

    def __init__(self, anchors, num_classes, max_detections=25, score_threshold=0.01,
                 iou_threshold=0.5, box_scales=(10.0, 10.0, 5.0, 5.0), **kwargs):
        super().__init__(**kwargs)
        self.anchors = np.asarray(anchors, dtype="float32").reshape(-1, 4)
        self.num_classes = int(num_classes)
        self.max_detections = int(max_detections)
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)
        self.box_scales = tuple(float(s) for s in box_scales)
        if self.num_classes < 1 or self.max_detections < 1:
            raise ValueError("DetectionPostProcess: num_classes and max_detections must be >= 1, "
                             f"got {num_classes} and {max_detections}.")
        self._op = self._annotated()

    def attributes(self):
        """The op's attributes, as the file's custom options will hold them."""
        y, x, h, w = self.box_scales
        return {"max_detections": self.max_detections, "max_classes_per_detection": 1,
                "detections_per_class": 100, "use_regular_nms": False,
                "nms_score_threshold": self.score_threshold,
                "nms_iou_threshold": self.iou_threshold, "num_classes": self.num_classes,
                "y_scale": y, "x_scale": x, "h_scale": h, "w_scale": w}

    def _annotated(self):
        import tensorflow as tf

        k = self.max_detections

        @tf.function(experimental_implements=_implements(self.attributes()))
        def post_process(box_encodings, class_predictions, anchors):
            # Shapes only: the converter replaces this function by the custom op.
            batch = tf.shape(box_encodings)[0]
            zeros = tf.zeros(tf.stack([batch, k]), tf.float32)
            boxes = tf.zeros(tf.stack([batch, k, 4]), tf.float32) + \
                0.0 * tf.reduce_sum(box_encodings) + 0.0 * tf.reduce_sum(anchors)
            return boxes, zeros, zeros + 0.0 * tf.reduce_sum(class_predictions), \
                tf.zeros(tf.stack([batch]), tf.float32)

        return post_process

    def _decode_nms(self, box_encodings, scores):
        import tensorflow as tf

        a = tf.constant(self.anchors)
        sy, sx, sh, sw = self.box_scales
        t = tf.cast(box_encodings, tf.float32)
        center = t[..., :2] / tf.constant([sy, sx]) * a[:, 2:] + a[:, :2]
        size = tf.exp(t[..., 2:] / tf.constant([sh, sw])) * a[:, 2:]
        boxes = tf.concat([center - size / 2, center + size / 2], -1)
        scores = tf.cast(scores, tf.float32)
        k = self.max_detections

        def one(args):
            b, s = args
            best, cls = tf.reduce_max(s, -1), tf.argmax(s, -1, output_type=tf.int32)
            keep, n = tf.image.non_max_suppression_padded(
                b, best, k, iou_threshold=self.iou_threshold,
                score_threshold=self.score_threshold, pad_to_max_output_size=True)
            valid = tf.range(k) < n
            pick = lambda v: tf.where(valid[(...,) + (None,) * (len(v.shape) - 1)],
                                      tf.gather(v, keep), tf.zeros_like(tf.gather(v, keep)))
            return (tf.clip_by_value(pick(b), 0.0, 1.0), tf.cast(pick(cls), tf.float32),
                    pick(best), tf.cast(n, tf.float32))

        return tf.map_fn(one, (boxes, scores), fn_output_signature=(
            tf.TensorSpec((k, 4), tf.float32), tf.TensorSpec((k,), tf.float32),
            tf.TensorSpec((k,), tf.float32), tf.TensorSpec((), tf.float32)))

    def call(self, inputs):
        import tensorflow as tf

        box_encodings, scores = inputs
        if _exporting():
            outs = self._op(tf.cast(box_encodings, tf.float32), tf.cast(scores, tf.float32),
                            tf.constant(self.anchors))
        else:
            outs = self._decode_nms(box_encodings, scores)
        return dict(zip(OUTPUTS, outs))

    def compute_output_spec(self, inputs):
        batch = inputs[0].shape[0]
        k = self.max_detections
        return {"boxes": keras.KerasTensor((batch, k, 4)),
                "classes": keras.KerasTensor((batch, k)),
                "scores": keras.KerasTensor((batch, k)),
                "count": keras.KerasTensor((batch,))}

    def get_config(self):
        config = super().get_config()
        config.update(anchors=self.anchors.tolist(), num_classes=self.num_classes,
                      max_detections=self.max_detections, score_threshold=self.score_threshold,
                      iou_threshold=self.iou_threshold, box_scales=self.box_scales)
        return config


_EXPORT = {"on": False}


def _exporting():
    return _EXPORT["on"]


class exporting:
    """Context in which `DetectionPostProcess` traces the annotated op (for the converter)."""

    def __enter__(self):
        self._old = _EXPORT["on"]
        _EXPORT["on"] = True
        return self

    def __exit__(self, *exc):
        _EXPORT["on"] = self._old
        return False


def has_postprocess(model):
    """Whether a Keras model contains a `DetectionPostProcess` layer (at any depth)."""
    stack = [model]
    while stack:
        layer = stack.pop()
        if isinstance(layer, DetectionPostProcess):
            return True
        stack.extend(getattr(layer, "layers", []) or [])
    return False


__all__ = ["DetectionPostProcess", "OP_NAME", "OUTPUTS", "has_postprocess"]
