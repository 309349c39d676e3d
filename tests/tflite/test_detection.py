"""Detectors: the fused post-process op in the file, its output layout, the int8 graph up to
its DEQUANTIZEs, the Edge TPU check, Keras-vs-file parity, COCO mAP by hand and `evaluate`.

One tiny untrained `ssd_mobile` (64x64, width 0.25, 3 classes, 120 anchors) is converted
twice, "qat" and "int8" (PTQ). Untrained, its features vanish (std 1e-5: every anchor would
score its bias); one forward pass in training mode with BatchNorm momentum 0 sets the
statistics, and class-head biases of -1 (scores around 0.3, spread by the weights) make
detections above parity's 0.3 threshold that differ from image to image.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import copy  # noqa: E402
import doctest  # noqa: E402
import importlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tfkd.tflite as tfl  # noqa: E402
convert_module = importlib.import_module("tfkd.tflite.convert")
from tfkd.tflite.postprocess import OP_NAME  # noqa: E402

SIZE, CLASSES, K = 64, 3, 10


@pytest.fixture(scope="module")
def detector():
    import keras

    import tfkd
    from tfkd.students.detection import ssd_mobile

    keras.utils.set_random_seed(0)
    anchors = tfkd.Anchors(image_size=(SIZE, SIZE), strides=(16, 32))
    net = ssd_mobile((SIZE, SIZE, 3), num_classes=CLASSES, width=0.25, anchors=anchors)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, SIZE, SIZE, 3)).astype(np.uint8)
    x = images.astype(np.float32)
    bns = [layer for layer in net.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bns:
        layer.momentum = 0.0
    net(x, training=True)
    for layer in bns:
        layer.momentum = 0.99
    for layer in net.layers:
        if layer.name.endswith("_cls"):
            w, b = layer.get_weights()
            layer.set_weights([3 * w, np.full_like(b, -1.0)])
    return anchors, net, images


def _convert(model, path, **kwargs):
    """tfl.convert, keeping the converter's own bytes (before `cpu_ops_last`) too."""
    seen = {}
    real = convert_module.cpu_ops_last

    def spy(content):
        seen["before"] = content
        return real(content)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(convert_module, "cpu_ops_last", spy)
        report = tfl.convert(model, path, **kwargs)
    return report, seen["before"]


@pytest.fixture(scope="module")
def qat_file(detector, tmp_path_factory):
    from tfkd import quantization
    from tfkd.students.detection import export_model

    anchors, net, images = detector
    qat = quantization.quantize_model(net, calibration_data=images.astype(np.float32))
    export = export_model(qat, anchors, max_detections=K)
    path = tmp_path_factory.mktemp("det") / "det_qat.tflite"
    report, before = _convert(export, path, quantization="qat", input_type="uint8")
    # Keras' detections, once: the QAT export model is slow to trace.
    keras_dets = {k: np.asarray(v) for k, v in
                  export.predict(images.astype(np.float32), batch_size=1, verbose=0).items()}
    return {"path": path, "report": report, "before": before, "export": export,
            "keras": keras_dets, "images": images}


@pytest.fixture(scope="module")
def int8_file(detector, tmp_path_factory):
    from tfkd.students.detection import export_model

    anchors, net, images = detector
    export = export_model(net, anchors, max_detections=K)
    path = tmp_path_factory.mktemp("det") / "det_int8.tflite"
    report = tfl.convert(export, path, quantization="int8", input_type="uint8",
                         representative_data=images.astype(np.float32))
    return {"path": path, "report": report, "export": export}


# -- the file ---------------------------------------------------------------------------------
def test_postprocess_op_with_its_attributes(qat_file):
    import flatbuffers.flexbuffers as flex
    from ai_edge_litert import schema_py_generated as schema

    report = qat_file["report"]
    assert report.op_counts[OP_NAME] == 1 and report.ops[-1].name == OP_NAME
    fb = schema.ModelT.InitFromObj(schema.Model.GetRootAs(qat_file["path"].read_bytes(), 0))
    op = fb.subgraphs[0].operators[-1]
    options = flex.Loads(bytes(op.customOptions))
    assert options["max_detections"] == K and options["num_classes"] == CLASSES
    assert (options["y_scale"], options["h_scale"]) == (10.0, 5.0)
    assert options["use_regular_nms"] == 0


def test_outputs_in_the_ops_order_by_index_name_and_signature(qat_file):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(qat_file["path"]))
    outs = it.get_output_details()
    assert [tuple(d["shape"]) for d in outs] == [(1, K, 4), (1, K), (1, K), (1,)]
    assert all(d["dtype"] == np.float32 for d in outs)
    assert [d["name"] for d in outs] == [OP_NAME, f"{OP_NAME}:1", f"{OP_NAME}:2",
                                         f"{OP_NAME}:3"]
    assert it.get_input_details()[0]["dtype"] == np.uint8
    # pycoral's detect.get_objects reads these names whenever a file has a signature.
    (signature,) = it._get_full_signature_list().values()
    by_index = [d["index"] for d in outs]  # boxes, classes, scores, count
    assert signature["outputs"] == {"output_0": by_index[3], "output_1": by_index[2],
                                    "output_2": by_index[1], "output_3": by_index[0]}
    # and the op's own outputs are these, in this order
    from tfkd.tflite.evaluate import postprocess_outputs

    assert postprocess_outputs(qat_file["path"]) == by_index


def test_reordered_file_computes_the_same_bits(qat_file):
    before, after = qat_file["before"], qat_file["path"].read_bytes()
    names = [op.name for op in tfl.inspect(before).ops]
    assert sorted(names) == sorted(op.name for op in qat_file["report"].ops)
    for a, b in zip(tfl.detections(before, qat_file["images"], clip=False).values(),
                    tfl.detections(after, qat_file["images"], clip=False).values()):
        np.testing.assert_array_equal(a, b)
    # The converter's order cuts the Edge TPU graph early (measured: 50 of 58 ops mapped),
    # the re-ordered file only at the post-process (55 of 58).
    cut = tfl.check_edgetpu(before)
    assert cut.first_unmapped is not None and cut.first_unmapped.op == "DEQUANTIZE"
    assert "cpu_ops_last" in cut.first_unmapped.reason
    assert cut.num_mapped < tfl.check_edgetpu(after).num_mapped


def test_qat_file_is_int8_up_to_the_dequantizes(qat_file):
    report = qat_file["report"]
    floats = [op.name for op in report.ops if op.float_tensors]
    assert floats == ["DEQUANTIZE", "DEQUANTIZE", OP_NAME]
    assert [op.name for op in report.ops[-3:]] == floats  # the CPU part comes last
    assert report.inputs[0].dtype == "uint8"
    tfl.verify_int8(report, input_type="uint8", output_type="float32", quantization="qat")


def test_verify_int8_still_catches_a_float_op(qat_file):
    report = copy.deepcopy(qat_file["report"])
    conv = next(op for op in report.ops if op.name == "CONV_2D" and op.index > 5)
    conv.outputs[0].dtype = "float32"
    with pytest.raises(tfl.QuantizationVerificationError, match=f"op #{conv.index} CONV_2D"):
        tfl.verify_int8(report, input_type="uint8", output_type="float32", quantization="qat")
    # A DEQUANTIZE feeding something else than the post-process is a float island.
    report = copy.deepcopy(qat_file["report"])
    deq = next(op for op in report.ops if op.name == "DEQUANTIZE")
    post = report.ops[-1]
    logistic = next(op for op in report.ops if op.name == "LOGISTIC")
    logistic.inputs[0] = deq.outputs[0]
    post.inputs = [t for t in post.inputs if t.index != deq.outputs[0].index]
    with pytest.raises(tfl.QuantizationVerificationError,
                       match=f"op #{deq.index} DEQUANTIZE .*inside the graph"):
        tfl.verify_int8(report, input_type="uint8", output_type="float32", quantization="qat")


def test_int8_ptq_file(int8_file):
    report = int8_file["report"]
    assert report.op_counts[OP_NAME] == 1 and report.op_counts["DEQUANTIZE"] == 2
    assert [op.name for op in report.ops if op.float_tensors] == \
        ["DEQUANTIZE", "DEQUANTIZE", OP_NAME]
    edge = tfl.check_edgetpu(int8_file["path"])
    assert edge.compatible and edge.num_mapped == len(edge.ops) - 3


def test_edgetpu_maps_everything_but_the_postprocess(qat_file):
    edge = tfl.check_edgetpu(qat_file["path"])
    cpu = [op for op in edge.ops if not op.mapped]
    assert [op.op for op in cpu] == ["DEQUANTIZE", "DEQUANTIZE", OP_NAME]
    assert all(op.boundary for op in cpu) and edge.compatible
    assert edge.num_mapped == len(edge.ops) - 3
    assert "CPU by design" in cpu[-1].reason and "float32" not in cpu[-1].reason
    assert "CPU by design" in str(edge)


def test_integer_output_type_is_refused_before_converting(qat_file, tmp_path):
    with pytest.raises(tfl.ConversionError, match="output_type='int8'.*float32 boxes"):
        tfl.convert(qat_file["export"], tmp_path / "x.tflite", quantization="qat",
                    input_type="uint8", output_type="int8")
    assert not (tmp_path / "x.tflite").exists()


def _toy_detector(extra=None):
    """4 anchors, 2 classes on an 8x8 image: converts in a second or two."""
    import keras

    anchors = np.array([[0.25, 0.25, 0.5, 0.5], [0.25, 0.75, 0.5, 0.5],
                        [0.75, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5]], "float32")
    image = keras.Input((8, 8, 3), batch_size=1)
    f = keras.layers.Flatten()(keras.layers.AveragePooling2D(4)(image))
    if extra is not None:
        f = extra(f)
    box = keras.layers.Reshape((4, 4))(keras.layers.Dense(16)(f))
    score = keras.layers.Reshape((4, 2))(keras.layers.Dense(8, "sigmoid")(f))
    post = tfl.DetectionPostProcess(anchors, num_classes=2, max_detections=3)
    return keras.Model(image, post([box, score]), name="toy_detector")


def test_custom_ops_are_allowed_for_the_postprocess_only(tmp_path):
    import keras
    import tensorflow as tf

    class CumProd(keras.layers.Layer):  # no builtin kernel: would become a custom op
        def call(self, x):
            return tf.math.cumprod(x, axis=-1)

    with pytest.raises(tfl.ConversionError, match=r"custom ops \['Cumprod'\].*allowed for "
                                                  f"{OP_NAME} only"):
        tfl.convert(_toy_detector(CumProd()), tmp_path / "x.tflite")
    assert not (tmp_path / "x.tflite").exists()


# -- parity and evaluation ----------------------------------------------------------------------
def test_parity_keras_export_model_vs_file(qat_file):
    images = qat_file["images"]
    r = tfl.parity(qat_file["keras"], qat_file["path"], images)
    assert r["num_samples"] == len(images) and r["keras_detections"] >= 2 * len(images)
    # Measured: 0.95 / 0.95 matched (the misses: ties of the 1/256-step quantized scores,
    # broken differently by the two NMS at the 10th detection), mean |score diff| 0.0008,
    # mean IoU 0.997, as many detections above 0.3 on 10 of 10 images.
    assert r["keras_matched"] >= 0.9 and r["file_matched"] >= 0.9, r
    assert r["mean_abs_score_diff"] < 0.02 and r["mean_iou"] > 0.9, r
    assert r["count_agreement"] >= 0.8, r
    # The export model itself gives the same figures (parity runs its predict).
    r2 = tfl.parity(qat_file["export"], qat_file["path"], images[:3])
    assert r2["keras_matched"] >= 0.9 and r2["num_samples"] == 3


def test_parity_asks_for_the_export_model(qat_file):
    with pytest.raises(tfl.TFLiteError, match="export model"):
        tfl.parity({"logits": np.zeros((10, 3))}, qat_file["path"], qat_file["images"])


def _jittered_ground_truth(dets, top=3, seed=1):
    """Ground truth made of each image's `top` Keras detections, moved by a few pixels: the
    detections below them are false positives (for both models), the top ones true positives
    at IoUs spread over COCO's thresholds."""
    rng = np.random.default_rng(seed)
    order = np.argsort(-dets["scores"], axis=1)[:, :top]
    boxes = np.take_along_axis(dets["boxes"], order[..., None], 1)
    boxes = np.clip(boxes + rng.normal(0, 0.03, boxes.shape), 0, 1).astype(np.float32)
    classes = np.take_along_axis(dets["classes"], order, 1).astype(np.int64)
    return boxes, classes


def test_evaluate_on_the_file_equals_coco_map_of_keras(qat_file):
    images, keras_dets = qat_file["images"], qat_file["keras"]
    boxes, classes = _jittered_ground_truth(keras_dets)
    want = tfl.coco_map(boxes, classes, keras_dets, image_sizes=(SIZE, SIZE))
    assert 0.2 < want["map"] < want["map50"] <= 1.0, want
    got = tfl.evaluate(qat_file["path"], (images, {"boxes": boxes, "classes": classes}),
                       metrics=("map", "map50", "per_class_ap50"))
    assert sorted(got) == ["map", "map50", "num_samples", "per_class_ap50"]
    assert got["num_samples"] == len(images)
    assert got["map"] == pytest.approx(want["map"], abs=0.03)
    assert got["map50"] == pytest.approx(want["map50"], abs=0.03)
    # Other layouts of the same data: (images, boxes, classes), a split, a tf.data pipeline.
    from tfkd.data.detection import DetectionSplit, detection_dataset

    same = tfl.evaluate(qat_file["path"], (images, boxes, classes), metrics=("map",))
    assert same["map"] == got["map"]
    n = len(images)
    split = DetectionSplit(images, boxes, classes.astype(np.int32),
                           np.full((n, 2), SIZE, np.int32), [""] * n, np.arange(n))
    assert tfl.evaluate(qat_file["path"], split, metrics=("map",))["map"] == got["map"]
    ds = detection_dataset(images, boxes, classes.astype(np.int32), batch_size=4,
                           shuffle=False)
    assert tfl.evaluate(qat_file["path"], ds, metrics=("map",))["map"] == \
        pytest.approx(got["map"], abs=1e-9)


def test_detection_evaluate_errors(qat_file):
    images = qat_file["images"]
    with pytest.raises(tfl.TFLiteError, match="detector.*metrics=\\('map', 'map50'\\)"):
        tfl.evaluate(qat_file["path"], (images, np.zeros(len(images))))
    with pytest.raises(tfl.RepresentativeDataError, match="encode=None"):
        tfl.evaluate(qat_file["path"], (images, {"class_logits": np.zeros((10, 120, 3))}),
                     metrics=("map",))
    with pytest.raises(tfl.TFLiteError, match=r"\['accuracy'\] are not detection metrics"):
        tfl.evaluate(qat_file["path"], (images, np.zeros((10, 1, 4)), np.zeros((10, 1))),
                     metrics=("map", "accuracy"))


def test_map_metrics_of_a_classifier_file_are_an_error(tmp_path):
    import keras

    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    tfl.convert(m, tmp_path / "c.tflite")
    with pytest.raises(tfl.TFLiteError, match="'map' is a detection metric"):
        tfl.evaluate(tmp_path / "c.tflite", (np.zeros((2, 4)), np.zeros(2)), metrics=("map",))


# -- coco_map by hand -----------------------------------------------------------------------
def _dets(boxes, classes, scores):
    boxes = np.asarray(boxes, np.float32)[None]
    return {"boxes": boxes, "classes": np.asarray(classes)[None],
            "scores": np.asarray(scores, np.float32)[None], "count": np.array([len(scores)])}


def test_coco_map_perfect_detection():
    gt = np.array([[[0.1, 0.2, 0.5, 0.6], [0.5, 0.5, 0.9, 0.8]]])
    r = tfl.coco_map(gt, np.array([[0, 1]]), _dets(gt[0], [0, 1], [0.9, 0.8]),
                     image_sizes=(100, 100))
    assert r["map50"] == pytest.approx(1.0) and r["map"] == pytest.approx(1.0)
    assert r["per_class_ap50"] == [pytest.approx(1.0)] * 2


def test_coco_map_iou_062_counts_at_050_not_at_075():
    # gt the whole image, the detection its top 62%: IoU 0.62, above 0.5, 0.55, 0.6 only.
    r = tfl.coco_map(np.array([[[0.0, 0.0, 1.0, 1.0]]]), np.array([[0]]),
                     _dets([[0.0, 0.0, 0.62, 1.0]], [0], [0.9]), image_sizes=(100, 100))
    assert r["map50"] == pytest.approx(1.0) and r["map75"] == pytest.approx(0.0)
    assert r["map"] == pytest.approx(3 / 10)  # 3 of COCO's 10 thresholds


def test_coco_map_false_positive_above_a_true_positive():
    # 2 gt boxes; ranked: TP (0.9), FP (0.8, no overlap), TP (0.7). Recall/precision after each:
    # (0.5, 1), (0.5, 1/2), (1, 2/3). The interpolated precision (max over recall >= r) is 1
    # for r in 0..0.50 (51 of COCO's 101 points) and 2/3 for r in 0.51..1 (50 points).
    gt = np.array([[[0.0, 0.0, 0.4, 0.4], [0.5, 0.5, 0.9, 0.9]]])
    dets = _dets([[0.0, 0.0, 0.4, 0.4], [0.0, 0.6, 0.3, 0.9], [0.5, 0.5, 0.9, 0.9]],
                 [0, 0, 0], [0.9, 0.8, 0.7])
    r = tfl.coco_map(gt, np.array([[0, 0]]), dets)
    assert r["map50"] == pytest.approx((51 * 1.0 + 50 * 2 / 3) / 101)  # 0.83498
    # A single gt with the FP ranked first: precision 1/2 at the only recall, 1.
    r = tfl.coco_map(gt[:, :1], np.array([[0]]), _dets(dets["boxes"][0, :2], [0, 0],
                                                       [0.7, 0.9]))
    assert r["map50"] == pytest.approx(0.5)


def test_coco_map_empty_images_absent_classes_and_subsets():
    gt = np.zeros((3, 2, 4), np.float32)
    labels = np.full((3, 2), -1)
    gt[0, 0], labels[0, 0] = [0.1, 0.1, 0.4, 0.4], 0   # image 0: a class-0 box
    gt[1, 0], labels[1, 0] = [0.5, 0.5, 0.9, 0.9], 2   # image 1: a class-2 box; image 2: none
    dets = {"boxes": np.zeros((3, 2, 4), np.float32), "classes": np.zeros((3, 2)),
            "scores": np.zeros((3, 2)), "count": np.array([1, 0, 0])}
    dets["boxes"][0, 0] = [0.1, 0.1, 0.4, 0.4]
    dets["scores"][0, 0] = 0.9
    r = tfl.coco_map(gt, labels, dets, class_names=["a", "b", "c"], image_sizes=(64, 64))
    assert r["per_class_ap50"] == [pytest.approx(1.0), None, 0.0]  # b: no gt, left out
    assert r["map50"] == pytest.approx(0.5)
    assert r["per_class"]["b"] == {"ap": None, "ap50": None}
    assert tfl.coco_map(gt, labels, dets, classes=[0])["map50"] == pytest.approx(1.0)
    assert tfl.coco_map(gt, labels, dets, class_names=["a", "b", "c"],
                        classes=["c"])["map50"] == 0.0
    # No ground truth and no detection anywhere: nothing to average.
    none = dict(dets, count=np.zeros(3))
    assert tfl.coco_map(np.zeros((3, 1, 4)), -np.ones((3, 1)), none)["map"] is None


def test_coco_map_area_split_follows_image_sizes():
    # A 24x24-pixel box (area 576 < 32^2) in a 64x64 frame, 75x75 (32^2 < 5625 < 96^2) in a
    # 200x200 one: COCO's areas are pixels of the frames given.
    gt = np.array([[[0.0, 0.0, 0.375, 0.375]]])
    dets = _dets(gt[0], [0], [0.9])
    small = tfl.coco_map(gt, np.array([[0]]), dets, image_sizes=(64, 64))
    medium = tfl.coco_map(gt, np.array([[0]]), dets, image_sizes=(200, 200))
    assert small["map_small"] == pytest.approx(1.0) and small["map_medium"] is None
    assert medium["map_medium"] == pytest.approx(1.0) and medium["map_small"] is None
    assert tfl.coco_map(gt, np.array([[0]]), dets)["map_small"] is None  # no sizes, no split


def test_coco_map_errors():
    gt, labels = np.zeros((1, 1, 4)), np.zeros((1, 1))
    with pytest.raises(tfl.TFLiteError, match="'boxes' \\(N, K, 4\\)"):
        tfl.coco_map(gt, labels, {"boxes": np.zeros((1, 2, 4))})
    with pytest.raises(tfl.TFLiteError, match="outside the 1 classes"):
        tfl.coco_map(gt, labels, _dets([[0, 0, 1, 1]], [3], [0.5]), class_names=["a"])


@pytest.mark.parametrize("name", ["tfkd.tflite.coco", "tfkd.tflite.postprocess",
                                  "tfkd.tflite.reorder"])
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_cli_evaluates_a_detection_file(qat_file, tmp_path, capsys):
    import json

    from tfkd.tflite import cli

    images = qat_file["images"]
    boxes, classes = _jittered_ground_truth(qat_file["keras"])
    npz = tmp_path / "det.npz"
    np.savez(npz, x_test=images, boxes=boxes, classes=classes)
    argv = ["tfkd-tflite", "evaluate", str(qat_file["path"]), "--data", str(npz)]
    cli.FLAGS.unparse_flags()
    try:
        code = cli.main(cli.FLAGS(argv))
    finally:
        cli.FLAGS.unparse_flags()
    out = capsys.readouterr()
    assert code == 0, out.err
    result = json.loads(out.out)
    want = tfl.evaluate(qat_file["path"], (images, boxes, classes), metrics=("map", "map50"))
    assert result == want
    np.savez(npz, x_test=images, y_test=classes)
    cli.FLAGS.unparse_flags()
    try:
        code = cli.main(cli.FLAGS(argv))
    finally:
        cli.FLAGS.unparse_flags()
    assert code == 1 and "needs arrays 'boxes'" in capsys.readouterr().err
