"""Face recognition / re-identification embedders, and the margin head that trains them.

An embedder maps an image (float pixels in [0, 255], `Rescaling(1/255)` first, like every
tfkd student) to an L2-normalised embedding, the layer named `embedding` (N, D): what is
exported and compared (cosine similarity) at verification time. It is trained as a
classifier of the training identities through a head that exists only at training time:

- `CosineHead(num_classes)`: cosines between the embedding and one learned centre per
  identity (N, num_classes), in [-1, 1]; `exclusivity=` adds the weight-exclusivity
  regulariser of [86] (class centres pushed apart).
- `ArcFaceLoss` / `CosFaceLoss`: the additive angular / cosine margin softmax on those
  cosines (J. Deng et al., "ArcFace", CVPR 2019; H. Wang et al., "CosFace", CVPR 2018).

`face_net` builds the training model: embedder + head, output the cosines, the embedding a
tapped layer (`student_layer="embedding"` in `tfkd.knowledge.embedding`'s terms);
`embedding_model(model)` cuts the head off for export.

The backbone is MobileNetV2's inverted residuals (ReLU6, Conv-BN order that QAT folds),
downsampling while the feature map keeps at least `MIN_FEATURE` pixels a side, so the same
builder serves 112x92 faces and 4x smaller ones (28x23: three strides fewer), then the
embedding head of face models ("BN-FC-BN", as ArcFace's): GlobalAveragePooling2D, Dense
without bias, BatchNormalization (folded into the Dense at export),
`tfkd.tflite.L2Normalization` (TFLite L2_NORMALIZATION: an int8 op, mapped by the Edge
TPU, output on TFLite's fixed 1/128 grid; `keras.layers.UnitNormalization` would convert to
float SQUARE / SUM / RSQRT ops).

Inputs have 3 channels by default: MediaPipe's ImageEmbedder (the Android client) refuses a
1-channel model ("depth = 3 or 4"), so grayscale faces (ORL) are fed as gray on 3 channels
(`tfkd.data.faces.load_faces(channels=3)`).

    >>> import numpy as np, tfkd.students.embedding as emb
    >>> model = emb.face_net((112, 92, 3), num_classes=30, embedding_dim=64)
    >>> model.output.shape, model.get_layer("embedding").output.shape
    ((None, 30), (None, 64))
    >>> faces = np.random.default_rng(0).uniform(0, 255, (2, 112, 92, 3))
    >>> e = emb.embedding_model(model).predict(faces, verbose=0)
    >>> np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-4)
    True
"""
import math

import keras
from keras import layers
from keras import ops

from tfkd.students import blocks
from tfkd.tflite.l2norm import L2Normalization

MIN_FEATURE = 6

# (channels at width 1, stride, expansion, repeats) of the backbone stages after the stem.
_STAGES = ((16, 1, 1, 1), (24, 2, 4, 2), (32, 2, 4, 2), (64, 2, 4, 2), (96, 1, 4, 1))


def _check(input_shape, num_classes, embedding_dim):
    if len(input_shape) != 3 or any(d is None for d in input_shape[:2]):
        raise ValueError(f"face_net: input_shape must be a fixed (height, width, channels), got "
                         f"{input_shape!r}.")
    if min(input_shape[:2]) < MIN_FEATURE:
        raise ValueError(f"face_net: the input {input_shape[:2]} is smaller than {MIN_FEATURE} "
                         "pixels a side; upsample such faces first (keras.layers.Resizing).")
    if int(num_classes) < 2:
        raise ValueError(f"face_net: num_classes (training identities) must be >= 2, got "
                         f"{num_classes}.")
    if int(embedding_dim) < 2:
        raise ValueError(f"face_net: embedding_dim must be >= 2, got {embedding_dim}.")


def face_net(input_shape=(112, 92, 3), num_classes=30, embedding_dim=128, width=1.0,
             head=True, exclusivity=0.0, dropout=0.0, bn_momentum=0.99, name="face_net"):
    """A face / re-id embedder with its training head.

    Args:
        input_shape: (height, width, channels) of the faces the model sees.
        num_classes: training identities (the head's centres); unused when `head=False`.
        embedding_dim: D of the `embedding` layer.
        width: multiplier of every backbone channel count (teachers: 2 or more).
        head: True for the training model (output: `CosineHead` cosines, `embedding` a
            layer), False for the embedder alone (output: the embedding).
        exclusivity: strength of the head's exclusivity regulariser ([86]).
        dropout: dropout rate before the embedding's Dense (0: none).
        bn_momentum: of every BatchNormalization layer (see `tfkd.batch_norm.momentum_for_steps`).
        name: model name.

    Taps: `stage1`..`stage4` (the backbone's stages, each at its own resolution), `pool`
    (the pooled feature), `embedding`.
    """
    _check(input_shape, num_classes, embedding_dim)
    m = bn_momentum
    inputs = keras.Input(input_shape, name="image")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    side = min(input_shape[:2])

    def stride(s):
        nonlocal side
        if s == 2 and side // 2 >= MIN_FEATURE:
            side //= 2
            return 2
        return 1

    x = blocks.conv_bn_relu(x, blocks.width(16, width), strides=stride(2), relu6=True,
                            name="stem", momentum=m)
    for i, (c, s, t, n) in enumerate(_STAGES):
        for j in range(n):
            x = blocks.inverted_residual(x, blocks.width(c, width), stride(s) if j == 0 else 1,
                                         t, name=f"block{i}_{j}", momentum=m)
        if 1 <= i <= 4:
            x = layers.Identity(name=f"stage{i}")(x)
    x = blocks.conv_bn_relu(x, blocks.width(256, width), kernel=1, relu6=True, name="last",
                            momentum=m)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Dense(int(embedding_dim), use_bias=False, name="fc")(x)
    x = layers.BatchNormalization(momentum=m, name="fc_bn")(x)
    embedding = L2Normalization(name="embedding")(x)
    if not head:
        return keras.Model(inputs, embedding, name=name)
    cosines = CosineHead(int(num_classes), exclusivity=exclusivity, name="head")(embedding)
    return keras.Model(inputs, cosines, name=name)


def embedding_model(model, layer="embedding", name=None):
    """The exported part of a training model: its input to `layer` (the head cut off).

    A model whose output already is `layer` is returned as it is.
    """
    try:
        out = model.get_layer(layer).output
    except ValueError:
        names = [lyr.name for lyr in model.layers]
        raise ValueError(f"embedding_model: `{model.name}` has no layer {layer!r}; its layers "
                         f"end with {names[-4:]}. Name the embedding layer with `layer=`.")
    if out is model.outputs[0] and len(model.outputs) == 1:
        return model
    return keras.Model(model.inputs, out, name=name or f"{model.name}_embedder")


@keras.saving.register_keras_serializable(package="tfkd")
class Exclusivity(keras.regularizers.Regularizer):
    """Weight exclusivity ([86]: X. Wang et al., "Exclusivity-Consistency Regularized
    Knowledge Distillation for Face Recognition", ECCV 2020): for the class centres `w_k`
    (columns of the head's kernel), `strength * mean_k max_{j != k} cos(w_k, w_j)`, so that
    no two identities' centres lie close."""

    def __init__(self, strength=1.0):
        self.strength = float(strength)

    def __call__(self, kernel):
        w = kernel / ops.maximum(ops.norm(kernel, axis=0, keepdims=True), 1e-12)
        cos = ops.matmul(ops.transpose(w), w)
        k = ops.shape(cos)[0]
        cos = cos - 3.0 * ops.eye(k, dtype=cos.dtype)  # the diagonal never is the max
        return self.strength * ops.mean(ops.max(cos, axis=1))

    def get_config(self):
        return {"strength": self.strength}


@keras.saving.register_keras_serializable(package="tfkd")
class CosineHead(layers.Layer):
    """Cosines between the (normalised) input and `num_classes` learned centres: the
    training-only classifier of a face embedder, read by `ArcFaceLoss` / `CosFaceLoss`.

    Args:
        num_classes: identities.
        exclusivity: strength of the `Exclusivity` regulariser on the centres (0: none).
    """

    def __init__(self, num_classes, exclusivity=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.exclusivity = float(exclusivity)

    def build(self, input_shape):
        self.kernel = self.add_weight(
            name="centres", shape=(input_shape[-1], self.num_classes),
            initializer=keras.initializers.GlorotUniform(),
            regularizer=Exclusivity(self.exclusivity) if self.exclusivity > 0 else None)

    def call(self, inputs):
        x = inputs / ops.maximum(ops.norm(inputs, axis=-1, keepdims=True), 1e-12)
        w = self.kernel / ops.maximum(ops.norm(self.kernel, axis=0, keepdims=True), 1e-12)
        return ops.matmul(x, ops.cast(w, x.dtype))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.num_classes)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "exclusivity": self.exclusivity}


class _MarginLoss(keras.losses.Loss):
    """Softmax cross-entropy on `scale * cosines`, with a margin on the label's cosine."""

    kind = None

    def __init__(self, margin, scale=30.0, name=None, **kwargs):
        super().__init__(name=name or self.kind, **kwargs)
        if not margin >= 0 or not scale > 0:
            raise ValueError(f"{type(self).__name__}: margin must be >= 0 and scale > 0, got "
                             f"margin={margin}, scale={scale}.")
        self.margin, self.scale = float(margin), float(scale)

    def target_logit(self, cos):  # pragma: no cover - abstract
        raise NotImplementedError

    def call(self, y_true, y_pred):
        cos = ops.clip(ops.cast(y_pred, "float32"), -1.0 + 1e-7, 1.0 - 1e-7)
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        one_hot = ops.one_hot(labels, ops.shape(cos)[-1])
        logits = ops.where(one_hot > 0, self.target_logit(cos), cos) * self.scale
        return keras.losses.categorical_crossentropy(one_hot, logits, from_logits=True)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin, "scale": self.scale}


@keras.saving.register_keras_serializable(package="tfkd")
class ArcFaceLoss(_MarginLoss):
    """ArcFace: the label's cosine becomes cos(theta + margin).

    Past theta = pi - margin, where cos(theta + m) would rise again, the insightface fallback
    cos(theta) - m sin(m) keeps the logit decreasing in theta.

    Example:

    >>> import numpy as np, tfkd.students.embedding as emb
    >>> cos = np.array([[0.8, 0.1]], "float32")
    >>> round(float(emb.ArcFaceLoss(margin=0.0, scale=1.0)([0], cos)), 5)  # plain softmax CE
    0.40319
    >>> round(float(emb.ArcFaceLoss(margin=0.5, scale=1.0)([0], cos)), 5)  # cos(acos(.8)+.5)
    0.54825
    """

    kind = "arcface"

    def __init__(self, margin=0.3, scale=30.0, name=None, **kwargs):
        super().__init__(margin, scale, name=name, **kwargs)

    def target_logit(self, cos):
        m = self.margin
        sin = ops.sqrt(ops.maximum(1.0 - cos * cos, 0.0))
        phi = cos * math.cos(m) - sin * math.sin(m)
        return ops.where(cos > math.cos(math.pi - m), phi, cos - m * math.sin(m))


@keras.saving.register_keras_serializable(package="tfkd")
class CosFaceLoss(_MarginLoss):
    """CosFace: the label's cosine becomes cos(theta) - margin."""

    kind = "cosface"

    def __init__(self, margin=0.35, scale=30.0, name=None, **kwargs):
        super().__init__(margin, scale, name=name, **kwargs)

    def target_logit(self, cos):
        return cos - self.margin
