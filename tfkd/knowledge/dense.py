"""Dense-prediction knowledge (semantic segmentation): what the teacher says per pixel.

Maps are channels-last `(batch, height, width, channels)`: per-pixel logits (the default,
`student_layer=teacher_layer=None`, `output=` picks the output of a multi-output model) or
tapped feature maps. Teacher and student may predict at different resolutions: every term
here bilinearly resizes the *student's* map to the *teacher's* height and width (after the
student's adapter, if any) before comparing, so gradients flow through the resize into the
student. Labels and per-pixel weights are resized to that size by nearest neighbour. Math
is float32.

`sample_weight` may be per sample `(batch,)` or per pixel `(batch, H, W)` (Keras'
segmentation style, 0 on padding): `PixelSoftTargets` applies per-pixel weights pixel by
pixel; the terms that compare whole maps weigh each image by the mean of its pixel weights.
"""
import keras
import tensorflow as tf
from keras import ops

from tfkd.knowledge.base import Knowledge
from tfkd.knowledge.base import as_float32
from tfkd.knowledge.base import check_count
from tfkd.knowledge.base import check_number
from tfkd.knowledge.base import check_positive
from tfkd.knowledge.feature import _check_layer_name
from tfkd.knowledge.feature import _feature
from tfkd.knowledge.feature import _resize_like

_EPS = 1e-12
_NEG = -1e9  # added to a similarity to take its column out of a softmax (exp gives exactly 0)


def _l2_normalise(x):
    return x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), _EPS))


def _pool(x, size):
    """size x size average pooling, stride size, remainder rows/columns dropped ('VALID')."""
    if size == 1:
        return x
    return tf.nn.avg_pool2d(x, size, size, "VALID")


def _per_pixel(sample_weight):
    return sample_weight is not None and len(ops.shape(sample_weight)) >= 3


def _nearest_like(x, ref, owner, what):
    """Labels / per-pixel weights (B, H', W'[, 1]) as (B, H, W) at `ref`'s size, nearest."""
    x = ops.convert_to_tensor(x)
    if len(x.shape) == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if len(x.shape) != 3:
        raise ValueError(f"{owner}: the {what} must be a (batch, height, width) map, got shape "
                         f"{tuple(x.shape)}.")
    if tuple(x.shape[1:3]) == tuple(ref.shape[1:3]) and None not in x.shape[1:3]:
        return x
    size = tuple(ops.shape(ref)[1:3])
    out = tf.image.resize(ops.cast(x, "float32")[..., None], size, method="nearest")[..., 0]
    return ops.cast(out, x.dtype)


class _DenseTerm(Knowledge):
    """Shared plumbing: which maps (logits or named features), rank checks, the resize."""

    def __init__(self, student_layer=None, teacher_layer=None, output=None, weight=1.0,
                 name=None, **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)
        owner = type(self).__name__
        if (student_layer is None) != (teacher_layer is None):
            raise ValueError(
                f"{owner}: give both `student_layer` and `teacher_layer` (to compare feature "
                "maps) or neither (to compare the per-pixel logits); got "
                f"student_layer={student_layer!r}, teacher_layer={teacher_layer!r}."
            )
        if student_layer is not None:
            _check_layer_name(owner, "student_layer", student_layer)
            _check_layer_name(owner, "teacher_layer", teacher_layer)
        if output is not None and not isinstance(output, (int, str)):
            raise TypeError(f"{owner}: `output` must be an index, a name or None, got {output!r}.")
        self.student_layer, self.teacher_layer = student_layer, teacher_layer
        self.output_selector = output

    def _map(self, view, side):
        owner = type(self).__name__
        if view is None:
            raise ValueError(f"{owner} needs a teacher: pass `teacher=` to the Distiller.")
        layer = self.teacher_layer if side == "teacher" else self.student_layer
        x = (view.output(self.output_selector) if layer is None
             else _feature(view, layer, side, owner))
        if len(x.shape) != 4:
            what = "per-pixel logits" if layer is None else f"feature {layer!r}"
            raise ValueError(
                f"{owner} expects the {side}'s {what} as a 4-D (batch, height, width, "
                f"channels) map, got shape {tuple(x.shape)}. Point the term at a dense "
                "output (segmentation logits) with `output=`, or at a convolutional layer "
                "before any global pooling / flattening with `student_layer` / "
                "`teacher_layer`; channels-first maps must be transposed to channels-last."
            )
        return x

    def build_term(self, teacher, student):
        t, s = self._map(teacher, "teacher"), self._map(student, "student")
        if self.teacher_layer is None and None not in (t.shape[-1], s.shape[-1]) \
                and t.shape[-1] != s.shape[-1]:
            raise ValueError(
                f"{type(self).__name__}: the teacher's logits have {t.shape[-1]} classes but "
                f"the student's have {s.shape[-1]}; both must predict the same classes."
            )
        self._build_maps(t, s)
        super().build_term(teacher, student)

    def _build_maps(self, t, s):
        pass

    def _maps(self, teacher, student):
        """(teacher, student) float32 maps, the student resized to the teacher's size."""
        t = as_float32(self._map(teacher, "teacher"))
        s = as_float32(self._map(student, "student"))
        adapter = getattr(self, "adapter", None)
        if adapter is not None:
            s = adapter(s)
        return t, _resize_like(s, t)

    def loss(self, teacher, student, y_true=None, sample_weight=None, training=None):
        if _per_pixel(sample_weight):
            # Per-pixel weights (Keras segmentation style) of a term that compares whole
            # maps: each image counts with the mean of its pixel weights.
            w = ops.cast(sample_weight, "float32")
            sample_weight = ops.mean(ops.reshape(w, (ops.shape(w)[0], -1)), axis=-1)
        return super().loss(teacher, student, y_true=y_true, sample_weight=sample_weight,
                            training=training)

    def get_config(self):
        config = super().get_config()
        config.update(student_layer=self.student_layer, teacher_layer=self.teacher_layer,
                      output=self.output_selector)
        return config


class PixelSoftTargets(_DenseTerm):
    """Pixel-wise soft targets: Hinton's KD at every pixel, averaged over the valid pixels.

    Paper: Y. Liu, K. Chen, C. Liu, Z. Qin, Z. Luo, J. Wang, "Structured Knowledge
    Distillation for Semantic Segmentation", CVPR 2019 (the pixel-wise term; also
    Hinton et al., arXiv:1503.02531).

    With per-pixel logits `z_t`, `z_s` (the student's resized bilinearly to the teacher's
    size), temperature `T` and the valid pixels `V_i` of sample `i`:

        kl_ip = KL(softmax(z_t,ip / T) || softmax(z_s,ip / T))
        L_i   = T^2 * sum_{p in V_i} kl_ip / max(|V_i|, 1)

    A pixel is valid unless its label equals `ignore_label` (labels are then needed; they
    are resized to the teacher's size by nearest neighbour), or its per-pixel sample weight
    is 0. `sample_weight` may be per sample `(batch,)` (applied to `L_i` as in Keras) or per
    pixel `(batch, H, W)`: then pixels of weight 0 (zero padding) are left out of the mean
    and the others count with their weight. A sample with no valid pixel has loss 0.

    Args:
        temperature: `T > 0`.
        ignore_label: label value of pixels to leave out (e.g. 255, or 11 for CamVid's
            void), or None: no label is needed then.
        output: which output holds the per-pixel logits for multi-output models.
        weight: multiplier of this term (>= 0).
        name: metric prefix.

    Example:

    >>> import numpy as np, tfkd
    >>> from tfkd.knowledge import View
    >>> rng = np.random.default_rng(0)
    >>> term = tfkd.knowledge.PixelSoftTargets(temperature=2.0, ignore_label=255)
    >>> t = View(rng.normal(size=(2, 8, 8, 4)).astype("float32"))
    >>> s = View(rng.normal(size=(2, 4, 4, 4)).astype("float32"))   # resized to 8 x 8
    >>> y = np.where(rng.random((2, 8, 8)) < 0.2, 255, 1)
    >>> term.compute(t, s, y).shape
    TensorShape([2])
    """

    default_name = "pixel_kd"
    aliases = ("pixel_soft_targets",)
    example_inputs = "dense"
    example_args = {"temperature": 2.0, "ignore_label": 255}

    def __init__(self, temperature=1.0, ignore_label=None, output=None, weight=1.0, name=None,
                 **kwargs):
        super().__init__(output=output, weight=weight, name=name, **kwargs)
        self.temperature = check_positive("temperature", temperature, "PixelSoftTargets")
        if ignore_label is not None:
            value = check_number("ignore_label", ignore_label, "PixelSoftTargets")
            if value != int(value):
                raise TypeError(f"PixelSoftTargets: `ignore_label` must be an integer label or "
                                f"None, got {ignore_label!r}.")
            ignore_label = int(value)
        self.ignore_label = ignore_label
        # The Distiller asks each term whether the batch must carry labels.
        self.requires_labels = self.ignore_label is not None

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        """Per-sample loss (batch,); `sample_weight` is read here only when per pixel."""
        t, s = self._maps(teacher, student)
        temp = self.temperature
        log_q_t = ops.log_softmax(t / temp, axis=-1)
        log_q_s = ops.log_softmax(s / temp, axis=-1)
        kl = ops.sum(ops.exp(log_q_t) * (log_q_t - log_q_s), axis=-1)  # (B, H, W)
        valid = ops.ones_like(kl)
        if self.ignore_label is not None:
            if y_true is None:
                raise ValueError(
                    "PixelSoftTargets needs the label maps to leave out pixels labelled "
                    f"ignore_label={self.ignore_label}: pass (x, y) to fit/evaluate, or set "
                    "ignore_label=None.")
            y = _nearest_like(y_true, t, "PixelSoftTargets", "labels")
            valid = ops.cast(ops.not_equal(ops.cast(y, "int32"), self.ignore_label), "float32")
        weights = valid
        if _per_pixel(sample_weight):
            pixel_w = ops.cast(_nearest_like(sample_weight, t, "PixelSoftTargets",
                                             "per-pixel sample weights"), "float32")
            valid = valid * ops.cast(pixel_w > 0, "float32")
            weights = valid * pixel_w
        count = ops.maximum(ops.sum(valid, axis=(1, 2)), 1.0)
        return (temp * temp) * ops.sum(kl * weights, axis=(1, 2)) / count

    def loss(self, teacher, student, y_true=None, sample_weight=None, training=None):
        if _per_pixel(sample_weight):  # applied per pixel in `compute`, not again per sample
            value = self.compute(teacher, student, y_true=y_true, sample_weight=sample_weight)
            return ops.sum(value) / ops.cast(ops.shape(value)[0], "float32")
        return super().loss(teacher, student, y_true=y_true, sample_weight=sample_weight,
                            training=training)

    def get_config(self):
        config = super().get_config()
        for key in ("student_layer", "teacher_layer"):
            config.pop(key)
        config.update(temperature=self.temperature, ignore_label=self.ignore_label)
        return config


class ChannelWiseKD(_DenseTerm):
    """Channel-wise distillation (CWD): each channel as a distribution over the pixels.

    Paper: C. Shu, Y. Liu, J. Gao, Z. Yan, C. Shen, "Channel-wise Knowledge Distillation for
    Dense Prediction", ICCV 2021.

    For channel `c` of a map `y` (H*W positions `p`), `phi(y_c) = softmax_p(y_c,p / T)`;
    with the student's map resized bilinearly to the teacher's size:

        L_i = T^2 / C * sum_c sum_p phi(t_ic)_p * (log phi(t_ic)_p - log phi(s_ic)_p)

    i.e. KL per channel, summed over positions, averaged over channels. By default on the
    per-pixel logits (same classes on both sides); with `student_layer` / `teacher_layer`
    on feature maps, the student's map going first through a learned 1x1 convolution to
    the teacher's width when the widths differ (as `Hint`; trained with the student, never
    exported).

    Args:
        temperature: `T > 0` (paper: 4 for segmentation logits).
        student_layer / teacher_layer: feature names; both or neither (then the logits).
        output: which output holds the logits for multi-output models.
        weight: multiplier of this term (>= 0); paper: 3.
        name: metric prefix.

    Example:

    >>> import numpy as np, tfkd
    >>> from tfkd.knowledge import View
    >>> rng = np.random.default_rng(0)
    >>> term = tfkd.knowledge.ChannelWiseKD(temperature=4.0)
    >>> t = View(rng.normal(size=(2, 8, 8, 3)).astype("float32"))
    >>> float(term.loss(t, t))
    0.0
    >>> float(term.loss(t, View(rng.normal(size=(2, 4, 4, 3)).astype("float32")))) > 0
    True
    """

    default_name = "cwd"
    aliases = ("channel_wise_kd", "channel_wise")
    example_inputs = "dense"
    example_args = {"temperature": 2.0, "student_layer": "student_map",
                    "teacher_layer": "teacher_map"}

    def __init__(self, temperature=4.0, student_layer=None, teacher_layer=None, output=None,
                 weight=1.0, name=None, **kwargs):
        super().__init__(student_layer=student_layer, teacher_layer=teacher_layer,
                         output=output, weight=weight, name=name, **kwargs)
        self.temperature = check_positive("temperature", temperature, "ChannelWiseKD")
        self.adapter = None

    def _build_maps(self, t, s):
        c_t, c_s = t.shape[-1], s.shape[-1]
        if c_t is None or c_s is None:
            raise ValueError(f"ChannelWiseKD: the channel (last) dimension must be known; got "
                             f"student {tuple(s.shape)} and teacher {tuple(t.shape)}.")
        if c_t != c_s and self.adapter is None:  # only features get here with c_t != c_s
            self.adapter = keras.layers.Conv2D(c_t, 1, dtype="float32", name=f"{self.name}_adapter")
            self.adapter.build(tuple(s.shape))

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        t, s = self._maps(teacher, student)
        temp = self.temperature
        # (B, H, W, C) -> (B, C, H*W): the softmax runs over the positions of each channel.
        flat = lambda x: ops.transpose(ops.reshape(x, (ops.shape(x)[0], -1, ops.shape(x)[-1])),
                                       (0, 2, 1))
        log_p_t = ops.log_softmax(flat(t) / temp, axis=-1)
        log_p_s = ops.log_softmax(flat(s) / temp, axis=-1)
        kl = ops.sum(ops.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)  # (B, C)
        return (temp * temp) * ops.mean(kl, axis=-1)

    def get_config(self):
        config = super().get_config()
        config["temperature"] = self.temperature
        return config


class PairwiseKD(_DenseTerm):
    """Pair-wise (affinity) distillation: the student keeps the teacher's node similarities.

    Paper: Y. Liu, K. Chen, C. Liu, Z. Qin, Z. Luo, J. Wang, "Structured Knowledge
    Distillation for Semantic Segmentation", CVPR 2019 (the pair-wise term).

    Each map (the student's resized bilinearly to the teacher's size) is average-pooled into
    nodes of `node_size x node_size` pixels (rows / columns that do not fill a node are
    dropped), each node's feature `f` L2-normalised over channels, and per image, over all
    `N^2` ordered pairs of its `N` nodes:

        a_jk = f_j . f_k                 (cosine similarity)
        L_i  = mean_{j,k} (a^s_ijk - a^t_ijk)^2          (distance="l2", the paper's)
        L_i  = mean_{j,k} |a^s_ijk - a^t_ijk|            (distance="l1", FAKD's)

    Channel counts may differ (only N x N similarities are compared).

    Args:
        node_size: node side in pixels (an integer >= 1); 1 compares single pixels.
        distance: "l2" (squared difference) or "l1" (absolute difference).
        student_layer / teacher_layer: feature names; both or neither (then the logits).
        output: which output to use when no layer is named.
        weight: multiplier of this term (>= 0).
        name: metric prefix.

    Example:

    >>> import numpy as np, tfkd
    >>> from tfkd.knowledge import View
    >>> rng = np.random.default_rng(0)
    >>> term = tfkd.knowledge.PairwiseKD(node_size=2, student_layer="s4", teacher_layer="t4")
    >>> t = View(None, {"t4": rng.normal(size=(2, 8, 8, 16)).astype("float32")})
    >>> s = View(None, {"s4": rng.normal(size=(2, 4, 4, 8)).astype("float32")})
    >>> term.compute(t, s).shape
    TensorShape([2])
    """

    default_name = "pairwise_kd"
    aliases = ("skd_pairwise", "affinity_kd")
    example_inputs = "dense"
    example_args = {"node_size": 2, "student_layer": "student_map", "teacher_layer": "teacher_map"}

    _DISTANCES = ("l2", "l1")

    def __init__(self, node_size=2, student_layer=None, teacher_layer=None, output=None,
                 distance="l2", weight=1.0, name=None, **kwargs):
        super().__init__(student_layer=student_layer, teacher_layer=teacher_layer,
                         output=output, weight=weight, name=name, **kwargs)
        owner = type(self).__name__
        self.node_size = check_count("node_size", node_size, owner)
        if distance not in self._DISTANCES:
            raise ValueError(f"{owner}: `distance` must be one of {self._DISTANCES}, got "
                             f"{distance!r}.")
        self.distance = distance

    def _build_maps(self, t, s):
        if any(d is not None and d < self.node_size for d in t.shape[1:3]):
            raise ValueError(
                f"PairwiseKD: the teacher's map {tuple(t.shape)} is smaller than one node of "
                f"node_size={self.node_size} pixels; use a smaller `node_size` or tap a "
                "larger map.")

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        t, s = self._maps(teacher, student)

        def affinity(x):
            x = _pool(x, self.node_size)
            x = _l2_normalise(ops.reshape(x, (ops.shape(x)[0], -1, ops.shape(x)[-1])))
            return ops.matmul(x, ops.transpose(x, (0, 2, 1)))  # (B, N, N)

        diff = affinity(s) - affinity(t)
        diff = ops.abs(diff) if self.distance == "l1" else ops.square(diff)
        return ops.mean(ops.reshape(diff, (ops.shape(diff)[0], -1)), axis=-1)

    def get_config(self):
        config = super().get_config()
        config["node_size"] = float(self.node_size)  # numbers are floats in configs
        config["distance"] = self.distance
        return config


class CrossImageRelationalKD(_DenseTerm):
    """Cross-image relational KD (CIRKD): pixel-to-pixel relations across the whole batch.

    Paper: C. Yang, H. Zhou, Z. An, X. Jiang, Y. Xu, Q. Zhang, "Cross-Image Relational
    Knowledge Distillation for Semantic Segmentation", CVPR 2022.

    The maps (the student's resized bilinearly to the teacher's size) are average-pooled by
    `pool` (cost: the relation matrix is `(B H W / pool^2)^2`), each pixel embedding is
    L2-normalised over channels, and all `M` pixels of the batch are related to each other
    (across images too): with `e_u` the embeddings, `w_u` the sample weight of pixel `u`'s
    image and temperature `T`,

        P_u   = softmax_v (e_u . e_v / T)      over the pixels v of images with w > 0
        L     = T^2 * sum_u w_u KL(P^t_u || P^s_u) / sum_u w_u

    The term is batch-level: it returns a scalar, and a sample of weight 0 leaves no trace
    (neither a row nor a column, nor a memory entry). Relations are those of the batch each
    replica sees.

    Memory (`memory_size > 0`, the paper's pixel queue): a non-trainable FIFO queue of the
    last `memory_size` teacher pixel embeddings of past calls adds columns `m_v` to both
    softmaxes (`e^t_u . m_v` and `e^s_u . m_v`, so the student row needs the teacher's width:
    a learned 1x1 convolution then projects the student's map to it, as the paper's
    projection head). Each call of `loss` first reads the queue, then pushes this batch's
    teacher embeddings (the last `memory_size` of them when more). Evaluation batches
    (`loss(..., training=False)`, which the Distiller passes from `evaluate`) read the queue
    but push nothing; the queue is saved with the Distiller's checkpoints. Without memory the widths may differ (only similarities are
    compared).

    Args:
        temperature: `T > 0` of the relation softmax (paper: 1.0).
        pool: pooling factor (an integer >= 1); 1 relates every pixel.
        memory_size: number of past teacher pixel embeddings kept (an integer >= 0).
        student_layer / teacher_layer: feature names (the paper uses the last feature
            maps); both or neither (then the logits).
        output: which output to use when no layer is named.
        weight: multiplier of this term (>= 0).
        name: metric prefix.

    Example:

    >>> import numpy as np, tfkd
    >>> from tfkd.knowledge import View
    >>> rng = np.random.default_rng(0)
    >>> term = tfkd.knowledge.CrossImageRelationalKD(temperature=0.5, pool=2)
    >>> t = View(rng.normal(size=(4, 8, 8, 6)).astype("float32"))
    >>> s = View(rng.normal(size=(4, 8, 8, 6)).astype("float32"))
    >>> term.compute(t, s).shape, float(term.loss(t, t))
    (TensorShape([]), 0.0)
    """

    default_name = "cirkd"
    aliases = ("cross_image_kd",)
    example_inputs = "dense"
    example_args = {"temperature": 0.5, "pool": 2}

    def __init__(self, temperature=1.0, pool=1, memory_size=0, student_layer=None,
                 teacher_layer=None, output=None, weight=1.0, name=None, **kwargs):
        super().__init__(student_layer=student_layer, teacher_layer=teacher_layer,
                         output=output, weight=weight, name=name, **kwargs)
        owner = "CrossImageRelationalKD"
        self.temperature = check_positive("temperature", temperature, owner)
        self.pool = check_count("pool", pool, owner)
        self.memory_size = check_count("memory_size", memory_size, owner, minimum=0)
        self.adapter = self.memory = None

    def _build_maps(self, t, s):
        if any(d is not None and d < self.pool for d in t.shape[1:3]):
            raise ValueError(
                f"CrossImageRelationalKD: the teacher's map {tuple(t.shape)} is smaller than "
                f"pool={self.pool}; use a smaller `pool`.")
        if not self.memory_size or self.memory is not None:
            return
        c_t, c_s = t.shape[-1], s.shape[-1]
        if c_t is None or c_s is None:
            raise ValueError(
                "CrossImageRelationalKD: with a memory the channel (last) dimension must be "
                f"known; got student {tuple(s.shape)} and teacher {tuple(t.shape)}.")
        if c_t != c_s:
            self.adapter = keras.layers.Conv2D(c_t, 1, dtype="float32", name=f"{self.name}_adapter")
            self.adapter.build(tuple(s.shape))
        # Updated in each replica's step; the first replica's queue is the one kept.
        state = dict(initializer="zeros", trainable=False, aggregation="only_first_replica")
        self.memory = self.add_weight(shape=(self.memory_size, c_t), name="memory", **state)
        self.memory_valid = self.add_weight(shape=(self.memory_size,), name="memory_valid",
                                            **state)
        self.memory_pointer = self.add_weight(shape=(), dtype="int32", name="memory_pointer",
                                              **state)

    def _push(self, e_t, w_pix):
        """Writes the newest min(M, memory_size) teacher embeddings at the queue's head."""
        size = self.memory_size
        m = tf.shape(e_t)[0]
        k = tf.minimum(m, size)
        index = ((self.memory_pointer + tf.range(k)) % size)[:, None]
        new = tf.stop_gradient(e_t[m - k:])
        # A non-finite embedding (a bad input) would poison every later step: never stored.
        keep = tf.logical_and(w_pix[m - k:] > 0, tf.reduce_all(tf.math.is_finite(new), axis=-1))
        new = tf.where(keep[:, None], new, 0.0)
        self.memory.assign(tf.tensor_scatter_nd_update(self.memory, index, new))
        self.memory_valid.assign(tf.tensor_scatter_nd_update(
            self.memory_valid, index, tf.cast(keep, "float32")))
        self.memory_pointer.assign((self.memory_pointer + k) % size)

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        if self.memory_size and self.memory is None:
            if not tf.executing_eagerly():
                raise ValueError(
                    "CrossImageRelationalKD: call `build_term` before tracing the loss (the "
                    "Distiller does): the memory queue is a variable created there.")
            self._build_maps(self._map(teacher, "teacher"), self._map(student, "student"))
        t, s = self._maps(teacher, student)
        batch = ops.shape(t)[0]
        w = (ops.ones((batch,), "float32") if sample_weight is None
             else ops.reshape(ops.cast(sample_weight, "float32"), (-1,)))

        t, s = _pool(t, self.pool), _pool(s, self.pool)
        embed = lambda x: _l2_normalise(ops.reshape(x, (-1, ops.shape(x)[-1])))  # (M, C)
        e_t, e_s = embed(t), embed(s)
        # Each pixel carries its image's weight (a broadcast, no dynamic repeat for XLA).
        w_pix = ops.reshape(w[:, None, None] * ops.ones_like(t[..., 0]), (-1,))
        # Columns of weight-0 images leave the softmax: their samples leave no trace.
        drop = ops.where(w_pix > 0, 0.0, _NEG)[None, :]
        sim_t = ops.matmul(e_t, ops.transpose(e_t))
        sim_s = ops.matmul(e_s, ops.transpose(e_s))
        if self.memory is not None:
            # Past teacher embeddings as extra columns of both sides; empty slots leave the
            # softmax. The queue is read here, before this call's push.
            memory = ops.transpose(tf.identity(self.memory))
            sim_t = ops.concatenate([sim_t, ops.matmul(e_t, memory)], axis=1)
            sim_s = ops.concatenate([sim_s, ops.matmul(e_s, memory)], axis=1)
            drop = ops.concatenate([drop, ops.where(self.memory_valid > 0, 0.0, _NEG)[None, :]],
                                   axis=1)
        temp = self.temperature
        log_p_t = ops.log_softmax(sim_t / temp + drop, axis=-1)
        log_p_s = ops.log_softmax(sim_s / temp + drop, axis=-1)
        kl = ops.sum(ops.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)  # (M,)
        value = (temp * temp) * ops.sum(w_pix * kl) / ops.maximum(ops.sum(w_pix), _EPS)
        if self.memory is not None and self.training_step:
            self._push(e_t, w_pix)
        return value

    def get_config(self):
        config = super().get_config()
        config.update(temperature=self.temperature, pool=float(self.pool),
                      memory_size=float(self.memory_size))
        return config
