"""A small zoo of Edge TPU-friendly students.

Every student is built only from ops that Coral's compiler maps to the Edge TPU and that
int8 TFLite runs everywhere: Conv2D, DepthwiseConv2D, BatchNormalization (folded at export),
ReLU / ReLU6, Add, GlobalAveragePooling2D and Dense. No hard-swish, leaky ReLU or GELU.
Each keeps the Conv-BN-ReLU order that quantization-aware training folds.

BatchNormalization uses `bn_momentum` (Keras' 0.99 by default). A short run (a few hundred
steps or fewer) needs a lower one, or its moving statistics stay near their initial values and
the student scores chance at inference: pick it with `tfkd.batch_norm.momentum_for_steps`, and
re-estimate the statistics with `tfkd.batch_norm.recompute_statistics` before export.

All students take float pixels in [0, 255] (like the reference teacher: the scaling is the
first layer, so an int8 `.tflite` can take uint8 pixels) and return logits. Classification students
(`tfkd.students.classification`) tap like the reference teacher: feature layers `stage1`,
`stage2`, `stage3` and `pool`. Segmentation students (`tfkd.students.segmentation`:
`lraspp_mobile`, `unet_mobile`) return per-pixel logits (N, H, W, classes) at the input's size
and tap `stage1` (1/2), `stage2` (1/4), `stage3` (1/8), `stage4` (1/16) and `head`; their
input needs a fixed size of at least `segmentation.MIN_SIZE` pixels a side. The detection
student (`tfkd.students.detection`: `ssd_mobile`) returns `{"class_logits", "box_regression"}`
against a `tfkd.Anchors` grid and taps `stage1`..`stage5` and its levels `p3`..`p6`.
Super-resolution models (`tfkd.students.super_resolution`: the `fsrcnn` student and the `edsr`
teacher, built by their own functions since they take a `scale`, not classes) map float pixels
of any size to an image `scale` times larger; their upsamplers are `tfkd.students.upsampling`.
Face / re-identification embedders (`tfkd.students.embedding`: `face_net`, import the module
itself) end in an L2-normalised `embedding` layer and train through a training-only
`CosineHead` with `ArcFaceLoss` / `CosFaceLoss`; `embedding_model` cuts the head off.

    >>> import tfkd.students
    >>> model = tfkd.students.build("mobile_cnn", input_shape=(32, 32, 3), num_classes=10)
    >>> model.count_params() <= 100_000
    True
"""
from tfkd.students import classification, detection, segmentation, super_resolution, upsampling
from tfkd.students.deploy import with_activation

STUDENTS = {
    "mobile_cnn": classification.mobile_cnn,
    "resnet_tiny": classification.resnet_tiny,
    "mobilenet_tiny": classification.mobilenet_tiny,
    "lraspp_mobile": segmentation.lraspp_mobile,
    "unet_mobile": segmentation.unet_mobile,
    "ssd_mobile": detection.ssd_mobile,
}

# The task each student solves: what its output means, so a recipe can check `--student`.
TASKS = {
    "mobile_cnn": "classification",
    "resnet_tiny": "classification",
    "mobilenet_tiny": "classification",
    "lraspp_mobile": "segmentation",
    "unet_mobile": "segmentation",
    "ssd_mobile": "detection",
}


def names(task=None):
    """Sorted names of the zoo's students; with `task` ("classification" or "segmentation"),
    only those of that task.

    >>> names("segmentation")
    ['lraspp_mobile', 'unet_mobile']
    """
    if task is None:
        return sorted(STUDENTS)
    known = sorted(set(TASKS.values()))
    if task not in known:
        raise ValueError(f"Unknown task {task!r}: the zoo has students for {', '.join(known)}.")
    return sorted(n for n in STUDENTS if TASKS[n] == task)


def build(name, input_shape=(32, 32, 3), num_classes=10, width=1.0, front_end=None,
          bn_momentum=0.99, **kwargs):
    """Builds the student `name` of the zoo; `width` multiplies every layer's channels.

    `front_end`, a function of the input tensor, inserts layers before the stem in the same
    flat functional graph (e.g. a learned upsampling front end for low-resolution inputs).
    `bn_momentum` is the momentum of every BatchNormalization layer. Keras' 0.99 suits runs
    of a few hundred steps or more; for shorter ones use
    `tfkd.batch_norm.momentum_for_steps(planned_steps)`.

    Segmentation students (`names("segmentation")`) need a fixed `input_shape` of at least
    `segmentation.MIN_SIZE` pixels a side and raise a ValueError naming it otherwise.
    Task-specific arguments go through `kwargs` (`anchors=` for `ssd_mobile`).
    """
    if name not in STUDENTS:
        raise ValueError(f"Unknown student {name!r}. The zoo has: {', '.join(names())}.")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}.")
    if not 0.0 <= bn_momentum < 1.0:
        raise ValueError(
            f"bn_momentum must be in [0, 1), got {bn_momentum}. It is the weight of the old "
            "value in each moving-average update (Keras' default 0.99); see "
            "tfkd.batch_norm.momentum_for_steps.")
    return STUDENTS[name](input_shape=tuple(input_shape), num_classes=int(num_classes),
                          width=float(width), front_end=front_end,
                          bn_momentum=float(bn_momentum), **kwargs)
