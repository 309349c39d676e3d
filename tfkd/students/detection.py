"""Object-detection students: SSDLite-style single-stage detectors that ship to the Edge TPU.

Design
------
Why SSD anchors rather than an anchor-free (FCOS / CenterNet) head: the file we ship ends in
TFLite's standard SSD post-process (`TFLite_Detection_PostProcess`, the op LiteRT, MediaPipe's
ObjectDetector and Coral's examples expect), and that op decodes *anchor* regressions with
the SSD box coder. An anchor-based head feeds it directly; an anchor-free head would need
its own decode in float ops after the int8 network, on the CPU. Heads are sigmoid per class
(RetinaNet's focal loss, no background column): LOGISTIC maps to the Edge TPU for any shape,
whereas Coral's SOFTMAX is 1-D only, and the post-process op takes per-class scores either way.

==========  ========  ==================================================================
feature     stride    layers (channels at width 1)
==========  ========  ==================================================================
`stage1-4`  1/2-1/16  the segmentation students' MobileNetV2-style encoder (16/24/40/72)
`stage5`    1/32      2 inverted residuals, expansion 4 (96)
`extra`     1/64      SSDLite extra layer: 1x1 Conv-BN-ReLU6, 3x3 depthwise stride 2, 1x1
`p3`..`p6`  8..64     per level: 1x1 Conv-BN-ReLU6 to the head width (64): the taps that
                      feature terms (`ForegroundImitation`, `AttentionGuided`) compare
==========  ========  ==================================================================

Each level has its own class head and box head (SSDLite: a 3x3 depthwise-BN-ReLU6 then a 1x1
conv to `anchors.per_location * num_classes` / `* 4` channels), reshaped to (cells x anchors,
...) and concatenated over levels in `Anchors`' order into the two named outputs
`class_logits` (N, anchors, classes) and `box_regression` (N, anchors, 4). The class convs'
bias starts at -log((1 - 0.01) / 0.01) (RetinaNet's prior), so that the focal loss does not
start swamped by background anchors.

Ops: CONV_2D, DEPTHWISE_CONV_2D (BN folded), RELU6 fused, ADD, RESHAPE, CONCATENATION; all
mapped by Coral's compiler. The exported file adds LOGISTIC on the class scores and the
post-process (CPU, by design); see `export_model` and `tfkd.tflite.convert`.

Example:

    >>> import numpy as np, tfkd
    >>> anchors = tfkd.Anchors(image_size=(96, 96), strides=(16, 32, 64))
    >>> model = tfkd.students.build("ssd_mobile", input_shape=(96, 96, 3), num_classes=2,
    ...                             width=0.5, anchors=anchors)
    >>> out = model.predict(np.zeros((1, 96, 96, 3), "float32"), verbose=0)
    >>> out["class_logits"].shape, out["box_regression"].shape
    ((1, 294, 2), (1, 294, 4))
"""
import math

import keras
from keras import layers

from tfkd.anchors import Anchors
from tfkd.students import blocks
from tfkd.students import segmentation

LEVELS = {8: "p3", 16: "p4", 32: "p5", 64: "p6"}
_STAGE5 = 96
_EXTRA = 128
_HEAD = 64
PRIOR = 0.01  # RetinaNet's initial foreground probability of every anchor


def check_anchors(anchors, input_shape, name):
    if anchors is None:
        return Anchors(image_size=tuple(input_shape[:2]))
    if isinstance(anchors, dict):
        anchors = Anchors.from_config(anchors)
    if not isinstance(anchors, Anchors):
        raise TypeError(f"{name}: `anchors` must be a tfkd.Anchors (or its config), got "
                        f"{type(anchors).__name__}.")
    if tuple(anchors.image_size) != tuple(input_shape[:2]):
        raise ValueError(
            f"{name}: the anchors are laid out for {anchors.image_size[0]}x"
            f"{anchors.image_size[1]} images but the input is {input_shape[0]}x"
            f"{input_shape[1]}; build them with tfkd.Anchors(image_size={tuple(input_shape[:2])}).")
    unknown = [s for s in anchors.strides if s not in LEVELS]
    if unknown:
        raise ValueError(f"{name}: anchor strides {unknown} have no feature level; the detector "
                         f"has levels at strides {sorted(LEVELS)}.")
    return anchors


def ssd_mobile(input_shape=(192, 192, 3), num_classes=1, width=1.0, anchors=None,
               name="ssd_mobile", front_end=None, bn_momentum=0.99):
    """SSDLite detector on the MobileNetV2-style encoder; outputs `class_logits`, `box_regression`.

    Args:
        input_shape: fixed (height, width, channels); 160-320 px suits mobile detection.
        num_classes: object classes (no background class: the heads are sigmoid).
        width: channel multiplier of the encoder and the heads.
        anchors: the `tfkd.Anchors` the heads predict against (default: strides 16, 32, 64
            at this input size). Train with `anchors.encoder(num_classes)` targets.
        front_end, bn_momentum: as for every student of the zoo.
    """
    input_shape = segmentation.check_input_shape(input_shape, name=name)
    anchors = check_anchors(anchors, input_shape, name)
    m = bn_momentum
    inputs = keras.Input(input_shape, name="image")
    taps = segmentation._encoder(inputs, front_end, width, m, name)
    x = taps["stage4"]
    for i in range(2):
        x = blocks.inverted_residual(x, blocks.width(_STAGE5, width), 2 if i == 0 else 1, 4,
                                     f"b_s5_{i}", m)
    taps["stage5"] = layers.Identity(name="stage5")(x)
    extra = blocks.conv_bn_relu(taps["stage5"], blocks.width(_EXTRA, width) // 2, kernel=1,
                                relu6=True, name="extra_expand", momentum=m)
    extra = layers.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False,
                                   name="extra_dw")(extra)
    extra = layers.BatchNormalization(momentum=m, name="extra_dw_bn")(extra)
    extra = layers.ReLU(max_value=6.0, name="extra_dw_relu")(extra)
    extra = blocks.conv_bn_relu(extra, blocks.width(_EXTRA, width), kernel=1, relu6=True,
                                name="extra_project", momentum=m)
    by_stride = {8: taps["stage3"], 16: taps["stage4"], 32: taps["stage5"], 64: extra}
    a, head = anchors.per_location, blocks.width(_HEAD, width)
    prior = keras.initializers.Constant(-math.log((1 - PRIOR) / PRIOR))
    levels = []
    for stride, (gh, gw) in zip(anchors.strides, anchors.grid_sizes):
        feat = by_stride[stride]
        if tuple(feat.shape[1:3]) != (gh, gw):
            raise ValueError(f"{name}: level stride {stride} is {tuple(feat.shape[1:3])} but the "
                             f"anchors expect {(gh, gw)}.")
        level = LEVELS[stride]
        p = blocks.conv_bn_relu(feat, head, kernel=1, relu6=True, name=f"{level}_neck",
                                momentum=m)
        levels.append((level, layers.Identity(name=level)(p), gh * gw * a))
    outputs = {}
    # Class heads, then box heads. The converter does not keep this order (it emits the box
    # head's DEQUANTIZE before the class head's convs); `tfkd.tflite.convert` re-orders the
    # file's operators (`cpu_ops_last`) so that every int8 op precedes the first DEQUANTIZE.
    for key, per_anchor, bias in (("class_logits", num_classes, prior),
                                  ("box_regression", 4, "zeros")):
        short = "cls" if key == "class_logits" else "box"
        flat = []
        for level, p, count in levels:
            h = layers.DepthwiseConv2D(3, padding="same", use_bias=False,
                                       name=f"{level}_{short}_dw")(p)
            h = layers.BatchNormalization(momentum=m, name=f"{level}_{short}_dw_bn")(h)
            h = layers.ReLU(max_value=6.0, name=f"{level}_{short}_dw_relu")(h)
            h = layers.Conv2D(a * per_anchor, 1, bias_initializer=bias,
                              name=f"{level}_{short}")(h)
            flat.append(layers.Reshape((count, per_anchor), name=f"{level}_{short}_flat")(h))
        out = flat[0] if len(flat) == 1 else layers.Concatenate(axis=1, name=f"{key}_concat")(flat)
        outputs[key] = layers.Identity(name=key)(out)
    return keras.Model(inputs, outputs, name=name)


def export_model(model, anchors, max_detections=25, score_threshold=0.01, iou_threshold=0.5):
    """The deployable detector: `model`, a sigmoid on its class logits, then SSD post-process.

    Returns a functional model (batch 1) whose outputs are the post-process op's `boxes`
    (1, K, 4) normalised [ymin, xmin, ymax, xmax], `classes` (1, K), `scores` (1, K) and
    `count` (1,). Convert it with `tfkd.tflite.convert(..., quantization="qat"|"int8")`: the
    network stays int8 up to the DEQUANTIZEs feeding `TFLite_Detection_PostProcess`. For a
    quantization-aware `model` the sigmoid is a quantized one (TFLite's int8 LOGISTIC range),
    so that it runs on the Edge TPU, not after the float cut.

    In Keras it predicts what the file does (a decode + the op's "fast" NMS), so
    `export_model(...).predict` is the float reference of the `.tflite` detections.
    """
    from tfkd.tflite.postprocess import DetectionPostProcess

    anchors = check_anchors(anchors, tuple(model.inputs[0].shape[1:]), model.name)
    outputs = model.output if isinstance(model.output, dict) else None
    if outputs is None or set(outputs) != {"class_logits", "box_regression"}:
        raise ValueError(
            f"export_model: '{model.name}' must return a dict with 'class_logits' and "
            "'box_regression' (an ssd_mobile student, or a detector built the same way).")
    inputs = keras.Input(tuple(model.inputs[0].shape[1:]), batch_size=1, name="image")
    out = model(inputs)
    if _is_quantized(model):
        from tfkd.quantization import layers as qlayers

        scores = qlayers.QuantizedActivation("sigmoid", name="scores")(out["class_logits"])
    else:
        scores = layers.Activation("sigmoid", name="scores")(out["class_logits"])
    num_classes = int(out["class_logits"].shape[-1])
    detections = DetectionPostProcess(
        anchors.center_size(), num_classes=num_classes, max_detections=max_detections,
        score_threshold=score_threshold, iou_threshold=iou_threshold,
        box_scales=anchors.box_scales, name="detections")([out["box_regression"], scores])
    return keras.Model(inputs, detections, name=f"{model.name}_detector")


def _is_quantized(model):
    from tfkd.quantization import layers as qlayers

    return any(isinstance(layer, qlayers.QuantizerMixin) for layer in model.layers)


def extend_classes(old_model, new_model):
    """Copies a trained detector into a detector of more classes, for class-incremental work.

    `new_model` is the same architecture (e.g. `ssd_mobile` with the same width and anchors)
    built with `num_classes = K_old + K_new`: every layer takes the old weights, and each
    level's class conv keeps the old classes' kernels and biases as its first `K_old` class
    columns of every anchor, the new columns keeping their fresh initialisation (RetinaNet's
    prior bias). Train `new_model` on the new classes' labels with
    `tfkd.knowledge.OldClassDistillation` and `old_model` as the teacher, so that it keeps
    the old classes (Shmelkov et al., ICCV 2017). Returns `new_model`.
    """
    k_old = int(old_model.output["class_logits"].shape[-1])
    k_new = int(new_model.output["class_logits"].shape[-1])
    if k_new <= k_old:
        raise ValueError(f"extend_classes: the new detector has {k_new} classes, not more than "
                         f"the old one's {k_old}; build it with num_classes=old + new.")
    old_layers = {layer.name: layer for layer in old_model.layers}
    missing = []
    for layer in new_model.layers:
        old = old_layers.get(layer.name)
        if old is None:
            if layer.weights:
                missing.append(layer.name)
            continue
        new_w, old_w = layer.get_weights(), old.get_weights()
        if [w.shape for w in new_w] == [w.shape for w in old_w]:
            layer.set_weights(old_w)
            continue
        if not layer.name.endswith("_cls"):
            raise ValueError(
                f"extend_classes: layer '{layer.name}' has weights of shapes "
                f"{[w.shape for w in old_w]} in the old detector and "
                f"{[w.shape for w in new_w]} in the new one; build the new one with the same "
                "width and anchors.")
        kernel, bias = new_w
        anchors_per_cell = kernel.shape[-1] // k_new
        for a in range(anchors_per_cell):
            kernel[..., a * k_new:a * k_new + k_old] = old_w[0][..., a * k_old:(a + 1) * k_old]
            bias[a * k_new:a * k_new + k_old] = old_w[1][a * k_old:(a + 1) * k_old]
        layer.set_weights([kernel, bias])
    if missing:
        raise ValueError(f"extend_classes: layers {missing} of the new detector are not in the "
                         "old one; both must be the same architecture.")
    return new_model
