"""Dense outputs: segmentation_scores against a float64 NumPy reference, evaluate's mIoU on an
int8 segmenter, parity's pixel agreement."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tfkd.tflite as tfl  # noqa: E402
from tfkd.tflite import metrics  # noqa: E402

SEG_CLASSES, SEG_VOID = 11, 11  # conftest's MNIST masks, shaped like CamVid's


def reference_scores(labels, pred, num_classes, ignore_class=None):
    """The figures by hand: a float64 confusion matrix over the labelled pixels."""
    labels, pred = labels.reshape(-1).astype(np.int64), pred.reshape(-1).astype(np.int64)
    keep = labels != ignore_class if ignore_class is not None else np.ones(labels.shape, bool)
    cm = np.zeros((num_classes, num_classes), np.float64)
    np.add.at(cm, (labels[keep], pred[keep]), 1.0)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    per_class = [None if union[c] == 0 or c == ignore_class else tp[c] / union[c]
                 for c in range(num_classes)]
    present = [v for v in per_class if v is not None]
    return {"miou": float(np.mean(present)), "pixel_accuracy": float(tp.sum() / cm.sum()),
            "per_class_iou": per_class}


def assert_scores_match(got, want, tol=1e-6):
    assert got["miou"] == pytest.approx(want["miou"], abs=tol)
    assert got["pixel_accuracy"] == pytest.approx(want["pixel_accuracy"], abs=1e-12)
    assert [v is None for v in got["per_class_iou"]] == \
        [v is None for v in want["per_class_iou"]]
    for g, w in zip(got["per_class_iou"], want["per_class_iou"]):
        if w is not None:
            assert g == pytest.approx(w, abs=tol)


@pytest.fixture(scope="module")
def golden():
    """5 classes, void id 5 == num_classes on ~20% of the pixels; class 3 is never a label and
    is predicted only on void pixels (so it is absent); class 4 is predicted but never a label
    (IoU 0, counted in the mean)."""
    rng = np.random.default_rng(7)
    n, h, w, c = 6, 10, 12, 5
    labels = rng.choice([0, 1, 2], size=(n, h, w), p=[0.5, 0.3, 0.2])
    void = rng.random((n, h, w)) < 0.2
    labels[void] = 5
    logits = rng.normal(size=(n, h, w, c)).astype(np.float32)
    logits[..., 0] += 2.0 * (labels == 0)  # a model better than chance
    logits[..., 3] = np.where(void, 10.0, -10.0)
    return labels, logits


def test_scores_match_a_float64_confusion_matrix(golden):
    labels, logits = golden
    pred = logits.argmax(-1)
    want = reference_scores(labels, pred, 5, ignore_class=5)
    got = tfl.segmentation_scores(labels, logits, ignore_class=5)
    assert_scores_match(got, want)
    # The case is what it claims: class 3 absent, class 4 counted at 0, others in between.
    assert got["per_class_iou"][3] is None and got["per_class_iou"][4] == 0.0
    assert 0.1 < got["miou"] < 0.9 and 0.1 < got["pixel_accuracy"] < 0.9
    # Void pixels count nowhere: predicting class 3 on all of them changed nothing above,
    # and scoring only the labelled pixels gives the same figures.
    keep = labels != 5
    again = tfl.segmentation_scores(labels[keep][None, None], pred[keep][None, None],
                                    num_classes=5)
    assert again == got
    # miou *is* Keras' MeanIoU here (void id outside 0..4): the mean of the present classes.
    present = [v for v in got["per_class_iou"] if v is not None]
    assert got["miou"] == pytest.approx(np.mean(present), abs=1e-6)


def test_ids_masks_and_chunking_give_identical_figures(golden, monkeypatch):
    labels, logits = golden
    whole = tfl.segmentation_scores(labels, logits, ignore_class=5)
    assert tfl.segmentation_scores(labels, logits.argmax(-1), num_classes=5,
                                   ignore_class=5) == whole
    assert tfl.segmentation_scores(labels[..., None], logits, ignore_class=5) == whole
    # One image per Keras update instead of all six: the same integer counts.
    monkeypatch.setattr(metrics, "_CHUNK_PIXELS", 100)
    assert tfl.segmentation_scores(labels, logits, ignore_class=5) == whole
    # Tensors are taken as well as arrays.
    import tensorflow as tf

    assert tfl.segmentation_scores(tf.constant(labels), tf.constant(logits),
                                   ignore_class=5) == whole


def test_ignore_class_inside_the_range_is_left_out_of_the_mean(golden):
    import keras

    labels, logits = golden
    labels = np.where(labels == 5, 0, labels)  # class 0 is now the void, inside 0..4
    pred = logits.argmax(-1)
    got = tfl.segmentation_scores(labels, logits, ignore_class=0)
    want = reference_scores(labels, pred, 5, ignore_class=0)
    assert_scores_match(got, want)
    assert got["per_class_iou"][0] is None and (pred[labels != 0] == 0).any()
    # Keras' MeanIoU keeps the ignored class at IoU 0 because it is predicted: it is lower.
    keras_miou = keras.metrics.MeanIoU(5, ignore_class=0)
    keras_miou.update_state(labels.reshape(-1), pred.reshape(-1))
    present = [v for v in got["per_class_iou"] if v is not None]
    assert float(keras_miou.result()) == pytest.approx(sum(present) / (len(present) + 1),
                                                       abs=1e-6)
    assert float(keras_miou.result()) < got["miou"]


def test_bad_inputs_name_the_problem_and_the_fix(golden):
    labels, logits = golden
    with pytest.raises(tfl.RepresentativeDataError, match=r"\[5\].*ignore_class="):
        tfl.segmentation_scores(labels, logits)  # the void id, forgotten
    with pytest.raises(tfl.TFLiteError, match="num_classes=5"):
        tfl.segmentation_scores(labels, logits, num_classes=4, ignore_class=5)
    with pytest.raises(tfl.TFLiteError, match="pass num_classes="):
        tfl.segmentation_scores(labels, logits.argmax(-1), ignore_class=5)
    with pytest.raises(tfl.TFLiteError, match=r"outside 0\.\.2"):
        tfl.segmentation_scores(labels, logits.argmax(-1), num_classes=3, ignore_class=5)
    with pytest.raises(tfl.RepresentativeDataError, match="resize the logits"):
        tfl.segmentation_scores(labels, logits[:, ::2, ::2], ignore_class=5)
    with pytest.raises(tfl.TFLiteError, match="threshold"):
        tfl.segmentation_scores(labels, logits[..., :1], ignore_class=5)
    with pytest.raises(tfl.RepresentativeDataError, match="No labelled pixel"):
        tfl.segmentation_scores(np.full_like(labels, 5), logits, ignore_class=5)
    with pytest.raises(tfl.RepresentativeDataError, match="non-integer"):
        tfl.segmentation_scores(labels + 0.5, logits, ignore_class=5)
    with pytest.raises(tfl.RepresentativeDataError, match="not dense"):
        tfl.segmentation_scores(labels[:, 0, 0], logits[:, 0, 0])
    with pytest.raises(tfl.TFLiteError, match="ignore_class must be an integer"):
        tfl.segmentation_scores(labels, logits, ignore_class="void")


def _interpreter_outputs(path, x):
    """Dequantized outputs of the file, computed without tfkd."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    scale, zp = inp["quantization"]
    o_scale, o_zp = out["quantization"]
    outs = []
    for sample in x:
        it.set_tensor(inp["index"], np.clip(np.round(sample / scale + zp), -128, 127)
                      .astype(np.int8)[None])
        it.invoke()
        outs.append((it.get_tensor(out["index"])[0].astype(np.float32) - o_zp) * o_scale)
    return np.stack(outs)


def test_evaluate_miou_of_an_int8_segmenter(trained_seg, mnist_seg):
    model, path = trained_seg
    _, (x, labels) = mnist_seg
    outputs = _interpreter_outputs(path, x)
    want = reference_scores(labels, outputs.argmax(-1), SEG_CLASSES, ignore_class=SEG_VOID)
    got = tfl.evaluate(path, (x, labels), metrics=("miou", "pixel_accuracy", "per_class_iou"),
                       ignore_class=SEG_VOID)
    assert got["num_samples"] == len(x)
    assert_scores_match(got, want)
    # It learned (so the comparison is not vacuous): better than "all background", whose
    # mIoU is about 0.09 and whose pixel accuracy is the background's share.
    background = float(np.mean(labels[labels != SEG_VOID] == 0))
    assert got["miou"] > 0.15 and got["pixel_accuracy"] > background
    # The same function on the Keras model's outputs: comparable, and close for int8.
    keras_scores = tfl.segmentation_scores(labels, model.predict(x, verbose=0),
                                           ignore_class=SEG_VOID)
    assert abs(keras_scores["miou"] - got["miou"]) < 0.05
    # Mixed with a classic metric, the stacked path gives the same dense figures.
    mixed = tfl.evaluate(path, (x, labels), metrics=("miou", "accuracy"),
                         ignore_class=SEG_VOID, max_samples=50)
    alone = tfl.evaluate(path, (x, labels), metrics=("miou",), ignore_class=SEG_VOID,
                         max_samples=50)
    assert mixed["miou"] == alone["miou"] and mixed["num_samples"] == 50
    assert 0 <= mixed["accuracy"] <= 1


def test_evaluate_dense_metric_errors(trained_seg, mnist_seg, files, mnist):
    _, path = trained_seg
    _, (x, labels) = mnist_seg
    _, (xc, yc) = mnist
    with pytest.raises(tfl.TFLiteError, match="segmentation metric.*'accuracy'"):
        tfl.evaluate(files["int8"], (xc, yc), metrics=("miou",))
    with pytest.raises(tfl.TFLiteError, match="apply to the dense metrics"):
        tfl.evaluate(files["int8"], (xc, yc), ignore_class=11)
    with pytest.raises(tfl.RepresentativeDataError, match=r"ignore_class=<the void id>"):
        tfl.evaluate(path, (x, labels), metrics=("miou",))
    with pytest.raises(tfl.RepresentativeDataError, match="pixel for pixel"):
        tfl.evaluate(path, (x, labels[:, :7]), metrics=("miou",), ignore_class=SEG_VOID)
    with pytest.raises(tfl.TFLiteError, match="Unknown metric 'mIoU_typo'"):
        tfl.evaluate(path, (x, labels), metrics=("mIoU_typo", "miou"), ignore_class=SEG_VOID)


def test_parity_of_a_dense_output(trained_seg, mnist_seg):
    model, path = trained_seg
    _, (x, _) = mnist_seg
    r = tfl.parity(model, path, x, max_samples=100)
    tfl_out = _interpreter_outputs(path, x[:100])
    keras_out = model.predict(x[:100], verbose=0)
    agree = float(np.mean(tfl_out.argmax(-1) == keras_out.argmax(-1)))
    assert r["pixel_agreement"] == pytest.approx(agree, abs=1e-12)
    assert r["top1_agreement"] == r["pixel_agreement"] and 0.9 < agree < 1.0
    scale = tfl.inspect(path).outputs[0].scale
    assert r["output_scale"] == pytest.approx(scale)
    assert r["mean_lsb"] == pytest.approx(float(np.abs(tfl_out - keras_out).mean()) / scale,
                                          rel=1e-4)
    assert 0 < r["mean_lsb"] <= r["max_lsb"]


def test_parity_of_a_classifier_has_no_pixel_agreement(files, trained_net, mnist):
    _, (x, _) = mnist
    r = tfl.parity(trained_net, files["int8"], x, max_samples=20)
    assert r["pixel_agreement"] is None and r["top1_agreement"] is not None
