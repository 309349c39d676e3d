"""SSD anchors (layout, coder, target assignment, NMS) and the ssd_mobile detector."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import tfkd
import tfkd.students
from tfkd.anchors import detection_losses
from tfkd.anchors import pairwise_iou
from tfkd.students import detection


@pytest.fixture(scope="module")
def anchors():
    return tfkd.Anchors(image_size=(64, 64), strides=(16, 32))


def test_anchor_layout_follows_the_heads_reshape(anchors):
    # The heads reshape (h, w, A * k) row-major into (h * w * A, k): anchor (i, j, a) of a
    # level sits at ((i * w + j) * A + a) in that level's block.
    c = anchors.center_size()
    (gh, gw), a = anchors.grid_sizes[0], anchors.per_location
    assert anchors.grid_sizes == ((4, 4), (2, 2)) and len(anchors) == (16 + 4) * a
    for i, j, k in ((0, 0, 0), (1, 2, 3), (3, 3, a - 1)):
        np.testing.assert_allclose(c[(i * gw + j) * a + k, :2], [(i + 0.5) / gh, (j + 0.5) / gw])
    start, stop = anchors.level_slices()[1]
    np.testing.assert_allclose(c[start, :2], [0.25, 0.25])
    # Base anchor of a level: anchor_scale * stride pixels for aspect ratio 1, scale 1.
    np.testing.assert_allclose(c[1, 2:], [3 * 16 / 64, 3 * 16 / 64], rtol=1e-6)
    # The reshape itself is numpy's row-major one.
    conv = np.arange(4 * 4 * a * 2).reshape(1, 4, 4, a * 2).astype("float32")
    flat = keras.layers.Reshape((4 * 4 * a, 2))(conv).numpy()
    np.testing.assert_array_equal(flat[0, (1 * 4 + 2) * a + 3], conv[0, 1, 2, 6:8])


def test_coder_round_trip_and_tflite_formula(anchors):
    rng = np.random.default_rng(0)
    lo = rng.uniform(0, 0.6, (len(anchors), 2))
    boxes = np.concatenate([lo, lo + rng.uniform(0.05, 0.4, (len(anchors), 2))], -1)
    t = anchors.encode_boxes(boxes).numpy()
    np.testing.assert_allclose(anchors.decode(t[None])[0].numpy(), boxes, atol=1e-5)
    # TFLite's decode (detection_postprocess.cc), float64.
    a = anchors.center_size().astype("float64")
    yc = t[:, 0] / 10 * a[:, 2] + a[:, 0]
    h = np.exp(t[:, 2] / 5) * a[:, 2]
    np.testing.assert_allclose(boxes[:, 0], yc - h / 2, atol=1e-5)


def test_assignment_positives_ignored_and_weights(anchors):
    boxes = np.array([[0.0, 0.0, 0.75, 0.75], [0.52, 0.52, 0.6, 0.6], [0, 0, 0, 0]], "float32")
    classes = np.array([1, 0, -1], "int32")
    y, w = anchors.encoder(num_classes=2)(boxes, classes)
    onehot, targets = y["class_logits"].numpy(), y["box_regression"].numpy()
    cw, bw = w["class_logits"].numpy(), w["box_regression"].numpy()
    iou = pairwise_iou(anchors.corners(), boxes[:2]).numpy()
    best = iou.max(1)
    pos = bw > 0
    # Every IoU >= 0.5 anchor is positive; the tiny box (IoU < 0.5 everywhere) claims its best.
    assert np.all(pos[best >= 0.5])
    assert pos[np.argmax(iou[:, 1])] and iou[:, 1].max() < 0.5
    assert onehot[np.argmax(iou[:, 1]), 0] == 1 and onehot[np.argmax(iou[:, 0]), 1] == 1
    ignored = (~pos) & (best >= 0.4)
    assert np.all(cw[ignored] == 0) and np.all(cw[~ignored] > 0)
    assert np.all(onehot[~pos] == 0) and np.all(targets[~pos] == 0)
    # Weights: Keras' mean over anchors (and classes) becomes a sum over them / positives.
    n = len(anchors)
    np.testing.assert_allclose(bw[pos], n / pos.sum())
    np.testing.assert_allclose(cw[~ignored], 2 * n / pos.sum())
    # Positive targets decode back to their ground-truth box.
    dec = anchors.decode(targets[None])[0].numpy()
    which = np.where(onehot[pos, 1] == 1, 0, 1)
    np.testing.assert_allclose(dec[pos], boxes[which], atol=1e-5)


def test_image_without_boxes_is_all_background(anchors):
    y, w = anchors.encoder(1)(np.zeros((3, 4), "float32"), -np.ones(3, "int32"))
    assert float(tf.reduce_sum(y["class_logits"])) == 0
    assert float(tf.reduce_sum(w["box_regression"])) == 0
    np.testing.assert_allclose(w["class_logits"].numpy(), len(anchors))


def test_losses_are_retinanet_sums_over_positives(anchors):
    rng = np.random.default_rng(1)
    boxes = np.array([[0.1, 0.1, 0.6, 0.7]], "float32")
    y, w = anchors.encoder(3)(boxes, np.array([2]))
    y = {k: v.numpy()[None] for k, v in y.items()}
    w = {k: v.numpy()[None] for k, v in w.items()}
    logits = rng.normal(size=(1, len(anchors), 3)).astype("float32")
    reg = rng.normal(size=(1, len(anchors), 4)).astype("float32")
    losses = detection_losses()
    got_cls = float(losses["class_logits"](y["class_logits"], logits, w["class_logits"]))
    got_box = float(losses["box_regression"](y["box_regression"], reg, w["box_regression"]))
    # float64 references: alpha-balanced focal loss summed over anchors and classes / positives.
    t, x = y["class_logits"][0].astype("float64"), logits[0].astype("float64")
    p = 1 / (1 + np.exp(-x))
    pt = np.where(t == 1, p, 1 - p)
    alpha = np.where(t == 1, 0.25, 0.75)
    focal = -alpha * (1 - pt) ** 2 * np.log(pt)
    valid = w["class_logits"][0] > 0
    pos = w["box_regression"][0] > 0
    np.testing.assert_allclose(got_cls, focal[valid].sum() / pos.sum(), rtol=1e-4)
    d = np.abs(reg[0] - y["box_regression"][0]).astype("float64")
    huber = np.where(d <= 1, 0.5 * d ** 2, d - 0.5)
    np.testing.assert_allclose(got_box, huber[pos].mean(-1).sum() / pos.sum(), rtol=1e-4)


def test_detect_keeps_best_class_and_suppresses_overlaps(anchors):
    logits = np.full((1, len(anchors), 2), -10.0, "float32")
    reg = np.zeros((1, len(anchors), 4), "float32")
    c = anchors.corners()
    iou = pairwise_iou(c, c).numpy()
    first = 5
    twin = int(np.argmax(np.where(np.arange(len(c)) == first, 0, iou[first])))
    far = int(np.argmin(iou[first]))
    logits[0, first] = [3.0, 1.0]
    logits[0, twin] = [-1.0, 2.0]   # overlaps `first` a lot: suppressed (class-agnostic NMS)
    logits[0, far] = [-1.0, 0.5]
    assert iou[first, twin] > 0.5 and iou[first, far] == 0
    det = anchors.detect(logits, reg, max_detections=5, score_threshold=0.3)
    assert det["count"][0] == 2
    np.testing.assert_allclose(det["boxes"][0, 0], np.clip(c[first], 0, 1), atol=1e-6)
    assert det["classes"][0, :2].tolist() == [0, 1]
    np.testing.assert_allclose(det["scores"][0, :2], 1 / (1 + np.exp([-3.0, -0.5])), rtol=1e-6)
    assert np.all(det["scores"][0, 2:] == 0)


def test_ssd_mobile_outputs_taps_and_errors(anchors):
    model = tfkd.students.build("ssd_mobile", input_shape=(64, 64, 3), num_classes=3,
                                width=0.25, anchors=anchors)
    out = model(np.zeros((2, 64, 64, 3), "float32"))
    assert out["class_logits"].shape == (2, len(anchors), 3)
    assert out["box_regression"].shape == (2, len(anchors), 4)
    assert tuple(model.get_layer("p4").output.shape[1:3]) == (4, 4)
    # RetinaNet prior: every anchor starts near 1% foreground.
    np.testing.assert_allclose(tf.sigmoid(out["class_logits"]).numpy().mean(), 0.01, atol=0.01)
    with pytest.raises(ValueError, match="tfkd.Anchors\\(image_size=\\(96, 96\\)\\)"):
        detection.ssd_mobile((96, 96, 3), anchors=anchors)
    with pytest.raises(ValueError, match="no feature level"):
        detection.ssd_mobile((64, 64, 3), anchors=tfkd.Anchors((64, 64), strides=(4, 16)))


def test_detector_learns_a_bright_square():
    rng = np.random.default_rng(0)
    anchors = tfkd.Anchors(image_size=(64, 64), strides=(16, 32))
    x = rng.uniform(0, 60, (16, 64, 64, 3)).astype("float32")
    boxes = np.zeros((16, 1, 4), "float32")
    for i in range(16):
        y0, x0 = rng.integers(0, 30, 2)
        s = rng.integers(20, 34)
        x[i, y0:y0 + s, x0:x0 + s] = 250
        boxes[i, 0] = np.array([y0, x0, y0 + s, x0 + s]) / 64
    enc = anchors.encoder(1)
    ds = tf.data.Dataset.from_tensor_slices((x, boxes, np.zeros((16, 1), "int32")))
    ds = ds.map(lambda a, b, c: (a, *enc(b, c))).batch(8).repeat()
    keras.utils.set_random_seed(0)
    model = detection.ssd_mobile((64, 64, 3), num_classes=1, width=0.5, anchors=anchors)
    model.compile(keras.optimizers.Adam(3e-3), loss=detection_losses())
    hist = model.fit(ds, steps_per_epoch=10, epochs=4, verbose=0).history["loss"]
    assert hist[-1] < 0.6 * hist[0], hist


def test_extend_classes_keeps_the_old_detector(anchors):
    keras.utils.set_random_seed(0)
    old = detection.ssd_mobile((64, 64, 3), num_classes=2, width=0.25, anchors=anchors)
    for layer in old.layers:  # trained-looking class convs, distinct per column
        if layer.name.endswith("_cls"):
            k, b = layer.get_weights()
            layer.set_weights([np.random.normal(size=k.shape), np.random.normal(size=b.shape)])
    new = detection.extend_classes(
        old, detection.ssd_mobile((64, 64, 3), num_classes=5, width=0.25, anchors=anchors))
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    a, b = old.predict(x, verbose=0), new.predict(x, verbose=0)
    np.testing.assert_allclose(b["class_logits"][..., :2], a["class_logits"], atol=1e-4)
    np.testing.assert_allclose(b["box_regression"], a["box_regression"], atol=1e-4)
    with pytest.raises(ValueError, match="num_classes=old \\+ new"):
        detection.extend_classes(new, old)
