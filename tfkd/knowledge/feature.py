"""Feature-based knowledge: what the teacher's intermediate representations say.

Features are tapped by layer name (the Distiller runs each model once and hands the terms a
`View` whose `.features` maps each requested name to its tensor). Image features are
channels-last `(batch, height, width, channels)`. All terms return a per-sample loss
`(batch,)`; math is float32.
"""
import keras
import tensorflow as tf
from keras import ops

from tfkd.knowledge.base import Knowledge
from tfkd.knowledge.base import as_float32
from tfkd.knowledge.base import check_non_negative
from tfkd.knowledge.base import check_positive

_EPS = 1e-12


def _check_layer_name(owner, arg, value):
    if not isinstance(value, str) or not value:
        raise TypeError(
            f"{owner}: `{arg}` must be a layer name (a non-empty string, or a "
            f"'nested_model/layer' path), got {value!r}."
        )
    return value


def _feature(view, name, side, owner):
    """Looks up a tapped feature in a View, with an error that says what was tapped."""
    if view is None:
        raise ValueError(
            f"{owner} needs a teacher ({side} feature {name!r}): pass `teacher=` to the "
            "Distiller."
        )
    try:
        return view.features[name]
    except KeyError:
        raise ValueError(
            f"{owner}: the {side} feature {name!r} was not tapped (available: "
            f"{sorted(view.features)}). Check the layer name; the Distiller taps the names "
            f"listed in the term's `{side}_features`."
        ) from None


def _spatial_resize(x, size):
    """Bilinear resize of a channels-last (B, H, W, C) or (B, L, C) tensor to `size`."""
    if len(x.shape) == 4:
        return tf.image.resize(x, size, method="bilinear")
    # (B, L, C): resize as a (B, L, 1, C) image along L only.
    return tf.image.resize(x[:, :, None, :], (size[0], 1), method="bilinear")[:, :, 0, :]


def _static_spatial(x):
    return tuple(x.shape[1:-1])


def _same_spatial(a, b):
    sa, sb = _static_spatial(a), _static_spatial(b)
    return len(sa) == len(sb) and all(x is not None and x == y for x, y in zip(sa, sb))


def _resize_like(x, ref):
    """Resizes `x` to the spatial size of `ref` when it differs (static or dynamic shapes)."""
    if len(x.shape) <= 2 or _same_spatial(x, ref):
        return x
    size = ops.shape(ref)[1:-1]
    if len(ref.shape) == 3:
        size = (size[0],)
    return _spatial_resize(x, tuple(size))


class Hint(Knowledge):
    """FitNets hint: a student feature, through a learned adapter, regresses a teacher feature.

    Paper: A. Romero, N. Ballas, S. E. Kahou, A. Chassang, C. Gatta, Y. Bengio, "FitNets:
    Hints for Thin Deep Nets", ICLR 2015.

    With student feature `F_s` (the "guided" layer), teacher feature `F_t` (the "hint"),
    adapter `r` (FitNets' regressor) and a bilinear resize `R` to the teacher's spatial size:

        L_i = mean_j ( F_t[i, j] - R(r(F_s))[i, j] )^2          (j: all positions, channels)

    The adapter is a 1x1 convolution (`Conv2D(C_t, 1)`) for 4-D features and a `Dense(C_t)`
    on the last axis for 2-D / 3-D features, created in `build_term`, float32, trained with
    the student by the Distiller and never exported with it.

    `adapter`:
      - `"auto"` (default): add the adapter only when the channel counts differ; with equal
        channels the student feature is compared directly (no extra capacity to hide a gap).
      - `"conv"`: always add it, as FitNets does.
      - `None`: never; channels must then match.

    The resize happens after the adapter, so it runs on `C_t` channels. Feature ranks must
    match (4-D with 4-D, ...): a 4-D map cannot hint a pooled 2-D vector.

    Args:
        student_layer: name of the student layer whose output is guided.
        teacher_layer: name of the teacher layer whose output is the hint.
        adapter: "auto", "conv" or None (see above).
        weight: multiplier of this term (>= 0).
        name: metric prefix (`hint_loss`).

    Example:

    >>> import numpy as np, keras, tfkd
    >>> from tfkd.knowledge import View
    >>> term = tfkd.knowledge.Hint("s_block", "t_block")
    >>> term.build_term(View(keras.KerasTensor((None, 10)), {"t_block": keras.KerasTensor((None, 8, 8, 32))}),
    ...                 View(keras.KerasTensor((None, 10)), {"s_block": keras.KerasTensor((None, 4, 4, 16))}))
    >>> t = View(None, {"t_block": np.ones((2, 8, 8, 32), "float32")})
    >>> s = View(None, {"s_block": np.ones((2, 4, 4, 16), "float32")})
    >>> term.loss(t, s).shape
    TensorShape([])
    """

    default_name = "hint"
    example_args = {"student_layer": "student_map", "teacher_layer": "teacher_map",
                    "adapter": "conv"}
    _ADAPTERS = ("auto", "conv", None)

    def __init__(self, student_layer, teacher_layer, adapter="auto", weight=1.0, name=None,
                 **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)
        self.student_layer = _check_layer_name("Hint", "student_layer", student_layer)
        self.teacher_layer = _check_layer_name("Hint", "teacher_layer", teacher_layer)
        if adapter not in self._ADAPTERS:
            raise ValueError(
                f"Hint: `adapter` must be one of {self._ADAPTERS}, got {adapter!r}: 'auto' adds "
                "a 1x1 conv only when channels differ, 'conv' always adds it, None never does."
            )
        self.adapter_mode = adapter
        self.adapter = None

    def build_term(self, teacher, student):
        t = _feature(teacher, self.teacher_layer, "teacher", "Hint")
        s = _feature(student, self.student_layer, "student", "Hint")
        where = f"Hint({self.student_layer!r} -> {self.teacher_layer!r})"
        if len(t.shape) != len(s.shape):
            raise ValueError(
                f"{where}: incompatible feature ranks: the student feature has shape "
                f"{tuple(s.shape)} ({len(s.shape)}-D) and the teacher's {tuple(t.shape)} "
                f"({len(t.shape)}-D). Pair layers of the same kind (a conv map with a conv "
                "map, a vector with a vector), or pool the map in the model before tapping it."
            )
        if len(t.shape) not in (2, 3, 4):
            raise ValueError(
                f"{where}: features must be 2-D (batch, channels), 3-D (batch, length, "
                f"channels) or 4-D (batch, height, width, channels); got {tuple(t.shape)}."
            )
        c_t, c_s = t.shape[-1], s.shape[-1]
        if c_t is None or c_s is None:
            raise ValueError(
                f"{where}: the channel (last) dimension must be known; got student "
                f"{tuple(s.shape)} and teacher {tuple(t.shape)}."
            )
        needs = self.adapter_mode == "conv" or (self.adapter_mode == "auto" and c_t != c_s)
        if not needs and c_t != c_s:
            raise ValueError(
                f"{where}: the student feature has {c_s} channels and the teacher's {c_t}, and "
                "`adapter=None` adds no projection. Use adapter='auto' (a learned 1x1 conv) or "
                "tap layers with equal channels."
            )
        if needs and self.adapter is None:
            if len(s.shape) == 4:
                self.adapter = keras.layers.Conv2D(
                    c_t, 1, dtype="float32", name=f"{self.name}_adapter"
                )
            else:
                self.adapter = keras.layers.Dense(c_t, dtype="float32", name=f"{self.name}_adapter")
            self.adapter.build(tuple(s.shape))
        super().build_term(teacher, student)

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        t = as_float32(_feature(teacher, self.teacher_layer, "teacher", "Hint"))
        s = as_float32(_feature(student, self.student_layer, "student", "Hint"))
        if self.adapter is not None:
            s = self.adapter(s)
        s = _resize_like(s, t)
        err = ops.reshape(ops.square(t - s), (ops.shape(t)[0], -1))
        return ops.mean(err, axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(
            student_layer=self.student_layer,
            teacher_layer=self.teacher_layer,
            adapter=self.adapter_mode,
        )
        return config


class AttentionTransfer(Knowledge):
    """Attention transfer: the student matches the teacher's spatial attention maps.

    Paper: S. Zagoruyko, N. Komodakis, "Paying More Attention to Attention: Improving the
    Performance of Convolutional Neural Networks via Attention Transfer", ICLR 2017.

    For a feature map `A` of shape (H, W, C) the attention map and its normalised form are

        a = mean_c |A[..., c]|^p                      (H, W), flattened to H*W values
        q = a / ||a||_2

    and per sample, over the layer pairs:

        L_i = (beta / 2) * sum_pairs mean_j ( q_s[i, j] - q_t[i, j] )^2

    Channels may differ. When the spatial sizes differ, the student's (un-normalised) map
    `a_s` is bilinearly resized to the teacher's size before normalising. 3-D features
    (batch, length, channels) are handled the same way along their length.

    Args:
        pairs: list of `(student_layer, teacher_layer)` name pairs.
        p: exponent `p > 0` of the attention map (paper: 2).
        beta: the paper's `beta` (>= 0); 1000 in the paper.
        weight: multiplier of this term (>= 0).
        name: metric prefix.

    Example:

    >>> import numpy as np, keras, tfkd
    >>> from tfkd.knowledge import View
    >>> term = tfkd.knowledge.AttentionTransfer([("s1", "t1")])
    >>> rng = np.random.default_rng(0)
    >>> t = View(None, {"t1": rng.normal(size=(2, 8, 8, 32)).astype("float32")})
    >>> s = View(None, {"s1": rng.normal(size=(2, 4, 4, 16)).astype("float32")})
    >>> float(term.loss(t, s)) > 0
    True
    """

    default_name = "attention"
    example_args = {"pairs": [("student_map", "teacher_map")], "p": 3, "beta": 500.0}

    def __init__(self, pairs, p=2, beta=1000.0, weight=1.0, name=None, **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)
        if isinstance(pairs, tuple) and len(pairs) == 2 and all(isinstance(x, str) for x in pairs):
            pairs = [pairs]
        try:
            pairs = [tuple(pair) for pair in pairs]
        except TypeError:
            pairs = None
        if not pairs or any(len(pair) != 2 for pair in pairs):
            raise ValueError(
                "AttentionTransfer: `pairs` must be a non-empty list of "
                "(student_layer, teacher_layer) name pairs, e.g. [('s_stage2', 't_stage2')]."
            )
        for s_name, t_name in pairs:
            _check_layer_name("AttentionTransfer", "pairs (student)", s_name)
            _check_layer_name("AttentionTransfer", "pairs (teacher)", t_name)
        self.pairs = pairs
        self.p = check_positive("p", p, "AttentionTransfer")
        self.beta = check_non_negative("beta", beta, "AttentionTransfer")

    @property
    def teacher_features(self):
        return tuple(dict.fromkeys(t for _, t in self.pairs))

    @property
    def student_features(self):
        return tuple(dict.fromkeys(s for s, _ in self.pairs))

    def build_term(self, teacher, student):
        for s_name, t_name in self.pairs:
            t = _feature(teacher, t_name, "teacher", "AttentionTransfer")
            s = _feature(student, s_name, "student", "AttentionTransfer")
            if len(t.shape) != len(s.shape) or len(t.shape) not in (3, 4):
                raise ValueError(
                    f"AttentionTransfer({s_name!r} -> {t_name!r}): attention needs spatial "
                    f"feature maps of the same rank, 4-D (batch, height, width, channels) or "
                    f"3-D (batch, length, channels); got student {tuple(s.shape)} and teacher "
                    f"{tuple(t.shape)}. Tap convolutional layers, before global pooling."
                )
        super().build_term(teacher, student)

    def _attention(self, x):
        """Un-normalised attention map: mean over channels of |x|^p, keeping a channel axis."""
        x = as_float32(x)
        return ops.mean(ops.power(ops.abs(x), self.p), axis=-1, keepdims=True)

    @staticmethod
    def _normalise(a):
        a = ops.reshape(a, (ops.shape(a)[0], -1))
        return a * ops.rsqrt(ops.maximum(ops.sum(ops.square(a), axis=-1, keepdims=True), _EPS))

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        total = 0.0
        for s_name, t_name in self.pairs:
            a_t = self._attention(_feature(teacher, t_name, "teacher", "AttentionTransfer"))
            a_s = self._attention(_feature(student, s_name, "student", "AttentionTransfer"))
            a_s = _resize_like(a_s, a_t)
            q_t, q_s = self._normalise(a_t), self._normalise(a_s)
            total = total + ops.mean(ops.square(q_s - q_t), axis=-1)
        return (self.beta / 2.0) * total

    def get_config(self):
        config = super().get_config()
        config.update(pairs=[list(pair) for pair in self.pairs], p=self.p, beta=self.beta)
        return config


class FeatureNormalizedKD(Knowledge):
    """Feature-normalised KD: a per-sample temperature from the penultimate feature's L2 norm.

    Paper: K. Xu, L. Rui, Y. Li, L. Gu, "Feature Normalized Knowledge Distillation for Image
    Classification", ECCV 2020 (code: github.com/aztc/FNKD).

    The paper replaces Hinton's fixed `T` by `||f|| / tau`, where `f` is the sample's
    penultimate feature (the input of the classifier), on each side with its own feature:

        q_fn   = softmax(tau * z_t / ||f_t||)               (teacher, eq. of q_fn)
        L_fn   = CE(y, softmax(z_s)) + lambda^2 * H(q_fn, softmax(tau * z_s / ||f_s||))

    This term implements the second part, per sample, as a KL divergence (the paper's cross
    entropy `H` minus the teacher's entropy, which does not depend on the student: same
    gradients, and 0 when the student matches), with the authors' released code's clip of
    the norm at `tau` (the per-sample temperature never drops below 1, so nothing is
    sharpened and a zero feature cannot divide by zero):

        T_t,i = max(||f_t,i||_2, tau) / tau          T_s,i = max(||f_s,i||_2, tau) / tau
        L_i   = KL( softmax(z_t,i / T_t,i) || softmax(z_s,i / T_s,i) )

    `||f||` is over all of a sample's feature values (a map is flattened). The whole logit,
    bias included, is divided by `T` (the Distiller sees logits, not `W f` and `b`
    separately). `weight` is the paper's `lambda^2`: the authors keep
    `lambda^2 tau^2 / mean||f||^2 ~ 1`, i.e. `weight ~ (mean||f|| / tau)^2` (their CIFAR
    setting: tau = 2, weight = 9). The task loss `CE(y, softmax(z_s))` is the Distiller's.

    Args:
        student_feature: name of the student's penultimate layer (the classifier's input).
        teacher_feature: name of the teacher's penultimate layer.
        tau: `tau > 0` (official code: 2.0).
        weight: `lambda^2` (>= 0).
        output: which output holds the logits for multi-output models.
        name: metric prefix.

    Example:

    >>> import numpy as np, tfkd
    >>> from tfkd.knowledge import View
    >>> term = tfkd.knowledge.FeatureNormalizedKD("s_pool", "t_pool", tau=2.0)
    >>> t = View(np.array([[2.0, 0.5, -1.0]], "float32"), {"t_pool": np.full((1, 4), 2.0, "float32")})
    >>> s = View(np.array([[1.0, 1.0, 0.0]], "float32"), {"s_pool": np.full((1, 4), 1.5, "float32")})
    >>> round(float(term.loss(t, s)), 4)
    0.075
    """

    default_name = "fnkd"
    example_args = {"student_feature": "student_vec", "teacher_feature": "teacher_vec",
                    "tau": 1.5}

    def __init__(self, student_feature, teacher_feature, tau=2.0, weight=1.0, output=None,
                 name=None, **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)
        self.student_feature = _check_layer_name("FeatureNormalizedKD", "student_feature",
                                                 student_feature)
        self.teacher_feature = _check_layer_name("FeatureNormalizedKD", "teacher_feature",
                                                 teacher_feature)
        self.tau = check_positive("tau", tau, "FeatureNormalizedKD")
        if output is not None and not isinstance(output, (int, str)):
            raise TypeError(
                f"FeatureNormalizedKD: `output` must be an index, a name or None, got {output!r}."
            )
        self.output_selector = output

    @property
    def teacher_features(self):
        return (self.teacher_feature,)

    @property
    def student_features(self):
        return (self.student_feature,)

    def build_term(self, teacher, student):
        from tfkd.knowledge.response import _check_logits

        _check_logits("FeatureNormalizedKD", teacher, student, self.output_selector)
        for view, name, side in ((teacher, self.teacher_feature, "teacher"),
                                 (student, self.student_feature, "student")):
            f = _feature(view, name, side, "FeatureNormalizedKD")
            if len(f.shape) < 2:
                raise ValueError(
                    f"FeatureNormalizedKD: the {side} feature {name!r} has shape "
                    f"{tuple(f.shape)}; it must have a batch axis and feature values "
                    "(the penultimate layer, e.g. the global pooling output)."
                )
        super().build_term(teacher, student)

    def _scaled_log_probs(self, view, name, side):
        z = as_float32(view.output(self.output_selector))
        f = as_float32(_feature(view, name, side, "FeatureNormalizedKD"))
        f = ops.reshape(f, (ops.shape(f)[0], -1))
        norm = ops.sqrt(ops.maximum(ops.sum(ops.square(f), axis=-1, keepdims=True), _EPS))
        temperature = ops.maximum(norm, self.tau) / self.tau
        return ops.log_softmax(z / temperature, axis=-1)

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        log_q_t = self._scaled_log_probs(teacher, self.teacher_feature, "teacher")
        log_q_s = self._scaled_log_probs(student, self.student_feature, "student")
        return ops.sum(ops.exp(log_q_t) * (log_q_t - log_q_s), axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(
            student_feature=self.student_feature,
            teacher_feature=self.teacher_feature,
            tau=self.tau,
            output=self.output_selector,
        )
        return config
