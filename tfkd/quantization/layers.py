"""Quantization-aware Keras 3 layers that lower to TFLite int8 kernels.

Every fake-quant here is `keras.quantizers.fake_quant_with_min_max_vars`, which the TensorFlow
backend lowers to `tf.quantization.fake_quant_*`: the TFLite converter reads each one as the
quantization parameters of the tensor it sits on. The layers therefore put fake-quants exactly
where TFLite keeps an int8 tensor, and nowhere else (an extra fake-quant becomes a requantize
op, a missing one a float island).

State lives in non-trainable variables, never in Python attributes, so that `fit`'s cached
`tf.function`s, XLA and `MirroredStrategy` all see mode changes made by callbacks:

- `quant_enabled` (0/1): fake-quant on or off (off: the layer is its float self, ranges still
  track), used by `StartQuantization` and to check BN folding.
- `range_min` / `range_max`: the activation range, updated by a moving average in training.
- `range_initialized` (0/1): the first training batch (or calibration) sets the range outright
  instead of averaging it with the placeholder.
- `range_frozen` (0/1): stop updating the range (`FreezeQuantizationRanges`).
- `range_decay`: the moving-average decay (`ema_decay`; calibration averages batches).
- `input_scale`: for a conv / Dense / affine whose input grid is known, that grid's scale
  as of the last training step (see `_quantize_bias`).

Biases are rounded to the grid TFLite stores them on, int32 at `input_scale * weight_scale`
per output channel. Left in float, a bias differs from its int32 self by up to half that step,
which shifts about 1 output in 200-1,000 by one LSB at every conv; a deep student sums those
flips (measured on a 30-conv MobileNetV2-style segmentation student: 0.43 LSB mean error at
the logits and 98.8% per-pixel argmax agreement with the float bias, 0.04 LSB and 99.9% with
the bias on its int32 grid).
"""

import keras
from keras import ops

_PACKAGE = "tfkd"
# Ranges are kept at least this wide: a zero-width range makes fake-quant divide by zero.
_MIN_RANGE = 1e-6


def _fake_quant(x, lo, hi, narrow_range=False, axis=None):
    return keras.quantizers.fake_quant_with_min_max_vars(
        x, lo, hi, num_bits=8, narrow_range=narrow_range, axis=axis
    )


def _flag(layer, name, value):
    # "only_first_replica": callbacks flip these in cross-replica context; no reduction needed.
    return layer.add_weight(
        name=name,
        shape=(),
        initializer=keras.initializers.Constant(float(value)),
        trainable=False,
        dtype="float32",
        aggregation="only_first_replica",
    )


class QuantizerMixin:
    """Per-tensor asymmetric activation quantizer and per-channel symmetric weight quantizer.

    Mixed into Keras layer subclasses; `quantize_output` says whether this layer owns the
    fake-quant of its output (the rewrite turns it off where the next layer fuses the
    activation or owns the range, see `transform.py`).
    """

    # Fixed output range, for ops whose int8 kernel imposes one (softmax, sigmoid, tanh).
    _fixed_range = None

    def __init__(self, *args, shared_range=False, range_peers=None, input_quantizer=None,
                 **kwargs):
        # Popped here (first in the MRO) so that every quantized layer accepts them from its
        # config without each constructor naming them; see `_range` and `_quantize_bias` for
        # what they do.
        super().__init__(*args, **kwargs)
        self.shared_range = bool(shared_range)
        self.range_peers = list(range_peers) if range_peers else None
        # The layer whose fake-quant puts this layer's input on its int8 grid (biased layers).
        self.input_quantizer = str(input_quantizer) if input_quantizer else None

    def _init_quantizer(self, quantize_output=True, ema_decay=0.999, quantize_inputs=False):
        self.quantize_output = bool(quantize_output)
        self.quantize_inputs = bool(quantize_inputs)
        self.ema_decay = float(ema_decay)

    def _needs_range(self):
        return ((self.quantize_output or self.quantize_inputs or self.shared_range)
                and self._fixed_range is None)

    def _build_quantizer(self):
        self.quant_enabled = _flag(self, "quant_enabled", 1.0)
        if self._needs_range():
            # Placeholders only: calibration or the first training batch overwrite them.
            self.range_min = self.add_weight(
                name="range_min", shape=(), initializer=keras.initializers.Constant(-6.0),
                trainable=False, dtype="float32", aggregation="mean")
            self.range_max = self.add_weight(
                name="range_max", shape=(), initializer=keras.initializers.Constant(6.0),
                trainable=False, dtype="float32", aggregation="mean")
            self.range_initialized = _flag(self, "range_initialized", 0.0)
            self.range_frozen = _flag(self, "range_frozen", 0.0)
            # A variable, not the config float, so that calibration can average batches
            # (decay t/(t+1)) through the same code path that training uses.
            self.range_decay = _flag(self, "range_decay", self.ema_decay)
        if self.shared_range and self._fixed_range is None:
            # The range this layer quantizes with: its same-scale group's, written by the
            # group's owner (range_min / range_max keep what this layer itself observes).
            self.shared_min = self.add_weight(
                name="shared_min", shape=(), initializer=keras.initializers.Constant(-6.0),
                trainable=False, dtype="float32", aggregation="mean")
            self.shared_max = self.add_weight(
                name="shared_max", shape=(), initializer=keras.initializers.Constant(6.0),
                trainable=False, dtype="float32", aggregation="mean")
        if self.input_quantizer:
            # 0 = not known yet (bias left in float); see `_quantize_bias`.
            self.input_scale = self.add_weight(
                name="input_scale", shape=(), initializer="zeros", trainable=False,
                dtype="float32", aggregation="mean")

    # Every quantized layer builds its Keras base, then its ranges, and adds the quantizer's
    # settings to the base config; layers with more to do override these.
    def build(self, input_shape):
        super().build(input_shape)
        self._build_quantizer()

    def get_config(self):
        return {**super().get_config(), **self._quantizer_config()}

    def _quantizer_config(self):
        config = {
            "quantize_output": self.quantize_output,
            "quantize_inputs": self.quantize_inputs,
            "ema_decay": self.ema_decay,
        }
        if self.shared_range:
            config["shared_range"] = True
            if self.range_peers:
                config["range_peers"] = list(self.range_peers)
        if self.input_quantizer:
            config["input_quantizer"] = self.input_quantizer
        return config

    # Conv and Dense save an explicit list of variables (kernel, bias, their own quantization
    # modes); the generic Layer behaviour also saves the ranges and flags added here.
    def save_own_variables(self, store):
        src = getattr(self, "_linked_input", None)
        if src is not None and hasattr(self, "input_scale"):
            # A loaded model is unlinked and reads its saved copy: save the scale its input
            # quantizer has now (a shared range may have moved after this layer's last read).
            self.input_scale.assign(src.grid_scale())
        keras.layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store):
        keras.layers.Layer.load_own_variables(self, store)

    def _enabled(self, quantized, x):
        return ops.cond(self.quant_enabled > 0.5, quantized, lambda: x)

    def _range(self, observed, training):
        """The range to quantize with; in training, first updates it from `observed` tensors."""
        if self._fixed_range is not None:
            return self._fixed_range
        if training:
            batch_min = ops.stop_gradient(ops.min(ops.stack([ops.min(t) for t in observed])))
            batch_max = ops.stop_gradient(ops.max(ops.stack([ops.max(t) for t in observed])))
            d = self.range_decay
            initialized = self.range_initialized > 0.5
            frozen = self.range_frozen > 0.5
            lo = ops.where(initialized, d * self.range_min + (1.0 - d) * batch_min, batch_min)
            hi = ops.where(initialized, d * self.range_max + (1.0 - d) * batch_max, batch_max)
            lo = ops.where(frozen, self.range_min, lo)
            hi = ops.where(frozen, self.range_max, hi)
            self.range_min.assign(lo)
            self.range_max.assign(hi)
            self.range_initialized.assign(ops.where(frozen, self.range_initialized, 1.0))
        else:
            lo, hi = self.range_min, self.range_max
        if self.shared_range:
            lo, hi = self._shared(lo, hi, training)
        # int8 must represent 0 exactly (zero padding, ReLU): the range always straddles it.
        lo = ops.minimum(ops.convert_to_tensor(lo), 0.0)
        hi = ops.maximum(ops.maximum(ops.convert_to_tensor(hi), 0.0), lo + _MIN_RANGE)
        return lo, hi

    def _shared(self, lo, hi, training):
        """The same-scale group's range (see `link_shared_ranges`).

        Every layer of a group quantizes with its own copy of one range, `shared_min` /
        `shared_max`. The group's owner, its last layer in the graph, joins in training what
        every member observed (this step's values: members run before it) and writes the
        result into every copy, so all copies always hold the same values: at inference each
        layer reads its own, identical copy, with or without links (a loaded model converts
        as saved). Members quantize with the copy of the previous step in training.
        """
        peers = getattr(self, "_linked_peers", None)
        if not (training and peers):
            return self.shared_min, self.shared_max
        lo, hi = ops.convert_to_tensor(lo), ops.convert_to_tensor(hi)
        for peer in peers:
            if hasattr(peer, "range_min"):
                lo = ops.minimum(lo, peer.range_min)
                hi = ops.maximum(hi, peer.range_max)
        for layer in (self,) + tuple(peers):
            if hasattr(layer, "shared_min"):
                layer.shared_min.assign(lo)
                layer.shared_max.assign(hi)
        return lo, hi

    def grid_range(self):
        """(lo, hi) of the int8 grid this layer's output is on at inference.

        What its output fake-quant uses: the fixed range of a softmax / sigmoid / tanh
        (also as a conv's activation), else the shared or own range, straddling 0.
        """
        fixed = self._fixed_range
        act = getattr(self, "activation", None)
        if fixed is None and callable(act):
            fixed = _FIXED_RANGES.get(getattr(act, "__name__", ""))
        if fixed is not None:
            return fixed
        if self.shared_range:
            lo, hi = self.shared_min, self.shared_max
        else:
            lo, hi = self.range_min, self.range_max
        lo = ops.minimum(ops.convert_to_tensor(lo), 0.0)
        hi = ops.maximum(ops.maximum(ops.convert_to_tensor(hi), 0.0), lo + _MIN_RANGE)
        return lo, hi

    def grid_scale(self):
        """The scale (one int8 step) of this layer's output grid; see `grid_range`."""
        lo, hi = self.grid_range()
        return (ops.convert_to_tensor(hi, "float32") - lo) / 255.0

    def _quantize_bias(self, bias, weight_bound, training):
        """The bias on TFLite's int32 grid: multiples of input scale x weight scale.

        The input scale is read from the linked input quantizer (`link_shared_ranges`); in
        training it is also stored in `input_scale`, which an unlinked (loaded) model reads.
        Straight-through gradient, like every fake-quant. Until a scale is known (a layer
        with no input quantizer, or a loaded model never trained) the bias stays in float.
        """
        if not self.input_quantizer:
            return bias
        src = getattr(self, "_linked_input", None)
        if src is not None:
            scale = ops.stop_gradient(src.grid_scale())
            if training:
                self.input_scale.assign(scale)
        else:
            scale = self.input_scale
        step = scale * (weight_bound / 127.0)

        def quantized():
            safe = ops.maximum(step, 1e-30)
            q = ops.where(scale > 0, ops.round(bias / safe) * safe, bias)
            return bias + ops.stop_gradient(q - bias)

        return self._enabled(quantized, bias)

    def _quantize_activation(self, x, training, observed=None):
        lo, hi = self._range(observed or [x], training)
        return self._enabled(lambda: _fake_quant(x, lo, hi), x)

    def _activate_and_quantize(self, y, training):
        """Conv/Dense epilogue: activation, then the output fake-quant(s).

        ReLU/ReLU6 fuse into the int8 kernel, so one fake-quant after them. Softmax, sigmoid
        and tanh are separate int8 ops: their input needs its own range, their output has
        the fixed range TFLite imposes.
        """
        name = getattr(self.activation, "__name__", "")
        fixed = _FIXED_RANGES.get(name)
        if fixed is not None:
            y = self._quantize_activation(y, training)
            y = self.activation(y)
            return self._enabled(lambda: _fake_quant(y, *fixed), y)
        y = self.activation(y)
        if self.quantize_output:
            y = self._quantize_activation(y, training)
        return y

    @staticmethod
    def _kernel_view(kernel, depthwise):
        if not depthwise:
            return kernel
        # TFLite stores depthwise kernels as (1, kh, kw, C*multiplier): one scale per output
        # channel, which is the flattened (in_channel, multiplier) pair.
        shape = ops.shape(kernel)
        return ops.reshape(kernel, (shape[0], shape[1], 1, -1))

    def _kernel_bound(self, kernel, per_channel=True, depthwise=False):
        """max |w| per output channel (or per tensor): the weight scale is bound / 127."""
        k = self._kernel_view(kernel, depthwise)
        if per_channel:
            bound = ops.max(ops.abs(k), axis=tuple(range(len(k.shape) - 1)))
        else:
            bound = ops.max(ops.abs(k))
        return ops.stop_gradient(ops.maximum(bound, _MIN_RANGE))

    def _quantize_kernel(self, kernel, per_channel=True, depthwise=False):
        """Symmetric narrow-range weights, as TFLite's int8 kernels require."""
        shape = ops.shape(kernel)
        k = self._kernel_view(kernel, depthwise)
        bound = self._kernel_bound(kernel, per_channel, depthwise)

        def quantized():
            q = _fake_quant(k, -bound, bound, narrow_range=True,
                            axis=-1 if per_channel else None)
            return ops.reshape(q, shape) if depthwise else q

        return self._enabled(quantized, kernel)


def _check_channels_last(layer):
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise ValueError(
            f"{type(layer).__name__} '{layer.name}' uses data_format='channels_first'; "
            "TFLite is channels-last: rebuild the model with data_format='channels_last'.")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class QuantizedConv2D(QuantizerMixin, keras.layers.Conv2D):
    """`Conv2D` with per-channel int8 weights and (optionally) an int8 output."""

    def __init__(self, *args, quantize_output=True, quantize_inputs=False, ema_decay=0.999,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quantizer(quantize_output, ema_decay, quantize_inputs)
        _check_channels_last(self)

    def call(self, inputs, training=None):
        kernel = self._quantize_kernel(self.kernel)
        y = ops.conv(inputs, kernel, strides=self.strides, padding=self.padding,
                     data_format=self.data_format, dilation_rate=self.dilation_rate)
        if self.use_bias:
            bound = self._kernel_bound(self.kernel)
            y = y + self._quantize_bias(self.bias, bound, bool(training))
        return self._activate_and_quantize(y, bool(training))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class QuantizedDepthwiseConv2D(QuantizerMixin, keras.layers.DepthwiseConv2D):
    """`DepthwiseConv2D` with per-channel int8 weights and (optionally) an int8 output."""

    def __init__(self, *args, quantize_output=True, quantize_inputs=False, ema_decay=0.999,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quantizer(quantize_output, ema_decay, quantize_inputs)
        _check_channels_last(self)

    def call(self, inputs, training=None):
        kernel = self._quantize_kernel(self.kernel, depthwise=True)
        y = ops.depthwise_conv(inputs, kernel, strides=self.strides, padding=self.padding,
                               data_format=self.data_format, dilation_rate=self.dilation_rate)
        if self.use_bias:
            bound = self._kernel_bound(self.kernel, depthwise=True)
            y = y + self._quantize_bias(self.bias, bound, bool(training))
        return self._activate_and_quantize(y, bool(training))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class QuantizedConv2DTranspose(QuantizerMixin, keras.layers.Conv2DTranspose):
    """`Conv2DTranspose` as TFLite's int8 TRANSPOSE_CONV runs it.

    Weights: symmetric, narrow range, one scale per *output* channel, which is axis 2 of the
    Keras kernel (h, w, out, in) and axis 0 of the (out, h, w, in) kernel TFLite stores.
    They are rounded onto that grid here, without a fake-quant op: TF 2.21's converter cannot
    carry a per-channel fake-quant through the (h, w, out, in) -> (out, h, w, in) transpose of
    the kernel ("'tfl.transpose' op has mismatched quantized axes of input and output", an
    error TensorFlow's own lite_v2_test expects), and a per-tensor one would waste the grid of
    every channel but the widest. Given the float kernel, the converter quantizes it itself,
    per output channel at max|w| / 127; rounding keeps each channel's max|w| (its largest
    weight lands on +-127), so the converter's scales and integers are the ones simulated
    here (the tests read them back from the file).

    Bias: on TFLite's int32 grid (input scale x weight scale), as in `QuantizedConv2D`.

    Activation: TF 2.21's converter never fuses one into TRANSPOSE_CONV; it emits a RELU /
    RELU6 / LOGISTIC ... op after it, and both tensors are int8. So a non-linear activation
    gets a fake-quant before it (this layer's own range) and one after it: the same range for
    ReLU / ReLU6 (an int8 RELU whose input and output share a scale only clamps, so the
    simulation is exact), the fixed range of TFLite's kernel for softmax / sigmoid / tanh.
    A separate `ReLU` layer after this one is paired with it by `quantize_model` through a
    shared range, to the same effect.
    """

    def __init__(self, *args, quantize_output=True, quantize_inputs=False, ema_decay=0.999,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quantizer(quantize_output, ema_decay, quantize_inputs)
        _check_channels_last(self)
        if tuple(self.dilation_rate) != (1, 1):
            raise ValueError(
                f"QuantizedConv2DTranspose '{self.name}': dilation_rate={self.dilation_rate} "
                "has no TFLite TRANSPOSE_CONV equivalent; use dilation_rate=1.")
        if self._activation_name() not in ACTIVATIONS:
            raise ValueError(
                f"QuantizedConv2DTranspose '{self.name}': activation "
                f"{self._activation_name()!r} has no int8 TFLite kernel this package "
                f"simulates; use one of {ACTIVATIONS}.")

    def _activation_name(self):
        return getattr(self.activation, "__name__", "linear")

    def _needs_range(self):
        # The pre-activation tensor is an int8 tensor of its own whatever the consumer does.
        return super()._needs_range() or self._activation_name() != "linear"

    def _kernel_bound(self, kernel, per_channel=True, depthwise=False):
        """max |w| per output channel: over (h, w, in) of the (h, w, out, in) kernel."""
        return ops.stop_gradient(ops.maximum(ops.max(ops.abs(kernel), axis=(0, 1, 3)),
                                             _MIN_RANGE))

    def _quantize_kernel(self, kernel, per_channel=True, depthwise=False):
        """The kernel rounded onto its per-output-channel int8 grid (straight-through)."""
        step = ops.reshape(self._kernel_bound(kernel) / 127.0, (1, 1, -1, 1))

        def quantized():
            q = ops.clip(ops.round(kernel / step), -127.0, 127.0) * step
            return kernel + ops.stop_gradient(q - kernel)

        return self._enabled(quantized, kernel)

    def call(self, inputs, training=None):
        training = bool(training)
        y = ops.conv_transpose(inputs, self._quantize_kernel(self.kernel),
                               strides=self.strides, padding=self.padding,
                               output_padding=self.output_padding,
                               data_format=self.data_format, dilation_rate=self.dilation_rate)
        if self.use_bias:
            y = y + self._quantize_bias(self.bias, self._kernel_bound(self.kernel), training)
        name = self._activation_name()
        if name == "linear":
            if self.quantize_output:
                y = self._quantize_activation(y, training)
            return y
        lo, hi = self._range([y], training)
        y = self._enabled(lambda: _fake_quant(y, lo, hi), y)
        y = self.activation(y)
        fixed = _FIXED_RANGES.get(name)
        if fixed is not None:
            return self._enabled(lambda: _fake_quant(y, *fixed), y)
        if self.quantize_output:
            # On grid values this only rounds ReLU6's 6 as the int8 kernel's clamp does; it
            # is what gives the converter the activation op's output scale.
            y = self._enabled(lambda: _fake_quant(y, lo, hi), y)
        return y


@keras.saving.register_keras_serializable(package=_PACKAGE)
class QuantizedDense(QuantizerMixin, keras.layers.Dense):
    """`Dense` with per-tensor int8 weights.

    Per-tensor because the converter rejects per-channel FULLY_CONNECTED weights from
    fake-quant ("mismatched quantized axes").
    """

    def __init__(self, *args, quantize_output=True, quantize_inputs=False, ema_decay=0.999,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quantizer(quantize_output, ema_decay, quantize_inputs)

    def call(self, inputs, training=None):
        y = ops.matmul(inputs, self._quantize_kernel(self.kernel, per_channel=False))
        if self.use_bias:
            bound = self._kernel_bound(self.kernel, per_channel=False)
            y = y + self._quantize_bias(self.bias, bound, bool(training))
        return self._activate_and_quantize(y, bool(training))


_FIXED_RANGES = {
    # TFLite's int8 kernels fix these output scales (1/256 and 1/128); any other range costs a
    # requantize op after the activation.
    "softmax": (0.0, 255.0 / 256.0),
    "sigmoid": (0.0, 255.0 / 256.0),
    "tanh": (-1.0, 127.0 / 128.0),
    # TFLite's int8 L2_NORMALIZATION writes on scale 1/128, zero point 0, like tanh.
    "l2_normalize": (-1.0, 127.0 / 128.0),
}
ACTIVATIONS = ("linear", "relu", "relu6") + tuple(_FIXED_RANGES)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class QuantizedActivation(QuantizerMixin, keras.layers.Layer):
    """An activation followed by its int8 output quantizer.

    Stands in for `ReLU`, `ReLU(max_value=6)`, `Activation(...)`, `Softmax` and for a folded
    `BatchNormalization` ("linear"), keeping that layer's name. Placed right after a conv,
    Dense or Add whose output is not quantized, the converter fuses it into that op.
    """

    def __init__(self, activation="linear", quantize_output=True, quantize_inputs=False,
                 ema_decay=0.999, **kwargs):
        super().__init__(**kwargs)
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"QuantizedActivation: activation={activation!r} has no int8 TFLite kernel "
                f"this package simulates; use one of {ACTIVATIONS}.")
        self.activation = activation
        self._fixed_range = _FIXED_RANGES.get(activation)
        self._init_quantizer(quantize_output, ema_decay, quantize_inputs)

    def build(self, input_shape):
        self._build_quantizer()

    def call(self, inputs, training=None):
        y = inputs
        if self.activation == "relu":
            y = ops.relu(y)
        elif self.activation == "relu6":
            y = ops.relu6(y)
        elif self.activation == "softmax":
            y = ops.softmax(y, axis=-1)
        elif self.activation == "sigmoid":
            y = ops.sigmoid(y)
        elif self.activation == "tanh":
            y = ops.tanh(y)
        elif self.activation == "l2_normalize":
            # tf.math.l2_normalize, not keras.ops.normalize: only the former converts to
            # TFLite's L2_NORMALIZATION op (ops.normalize lowers to float SQUARE/SUM/RSQRT).
            import tensorflow as tf

            y = tf.math.l2_normalize(y, axis=-1, epsilon=1e-12)
        if self.quantize_output:
            y = self._quantize_activation(y, bool(training))
        return y

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "activation": self.activation,
                **self._quantizer_config()}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class QuantizedChannelAffine(QuantizerMixin, keras.layers.Layer):
    """`y = x * scale + offset` per channel, run as a 1x1 int8 depthwise convolution.

    Stands in for `Rescaling`, `Normalization` and a `BatchNormalization` that follows no conv.
    A plain MUL/ADD by a float constant stays float in the converter; a depthwise kernel is
    quantized per channel, where each scale is exactly representable (it is its own maximum).
    """

    def __init__(self, channels, quantize_output=True, quantize_inputs=False, ema_decay=0.999,
                 trainable_affine=False, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.trainable_affine = bool(trainable_affine)
        self._init_quantizer(quantize_output, ema_decay, quantize_inputs)

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                f"QuantizedChannelAffine '{self.name}' needs an image input (batch, h, w, c); "
                f"got shape {input_shape}. Apply this preprocessing outside the model.")
        self.scale = self.add_weight(name="scale", shape=(self.channels,), initializer="ones",
                                     trainable=self.trainable_affine)
        self.offset = self.add_weight(name="offset", shape=(self.channels,),
                                      initializer="zeros", trainable=self.trainable_affine)
        self._build_quantizer()

    def call(self, inputs, training=None):
        kernel = ops.reshape(self.scale, (1, 1, self.channels, 1))
        bound = self._kernel_bound(kernel, depthwise=True)
        kernel = self._quantize_kernel(kernel, depthwise=True)
        y = ops.depthwise_conv(inputs, kernel, strides=1, padding="valid")
        y = y + self._quantize_bias(self.offset, bound, bool(training))
        if self.quantize_output:
            y = self._quantize_activation(y, bool(training))
        return y

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "channels": self.channels,
                "trainable_affine": self.trainable_affine, **self._quantizer_config()}


class _QuantizedMerge(QuantizerMixin):
    """A merge layer (Add, Multiply) whose int8 kernel rescales each input itself: only its
    output is fake-quantized."""

    def __init__(self, quantize_output=True, quantize_inputs=False, ema_decay=0.999, **kwargs):
        super().__init__(**kwargs)
        self._init_quantizer(quantize_output, ema_decay, quantize_inputs)

    def call(self, inputs, training=None):
        y = super().call(inputs)
        if self.quantize_output:
            y = self._quantize_activation(y, bool(training))
        return y


@keras.saving.register_keras_serializable(package=_PACKAGE)
class QuantizedAdd(_QuantizedMerge, keras.layers.Add):
    """`Add` with an int8 output (TFLite's ADD rescales each input itself)."""


@keras.saving.register_keras_serializable(package=_PACKAGE)
class QuantizedMultiply(_QuantizedMerge, keras.layers.Multiply):
    """`Multiply` with an int8 output (TFLite's MUL takes each input on its own scale and
    rescales the product; broadcasting (N, 1, 1, C) gates over (N, H, W, C) maps included).

    The attention gates of squeeze-excite and LR-ASPP (a sigmoid in [0, 1) times a feature
    map) are the usual case.
    """


@keras.saving.register_keras_serializable(package=_PACKAGE)
class QuantizedConcatenate(QuantizerMixin, keras.layers.Concatenate):
    """`Concatenate` whose inputs are all quantized with the output's range.

    TFLite's int8 CONCATENATION needs one scale for inputs and output; inputs with their own
    ranges would each get a requantize op. The rewrite therefore leaves the producers'
    outputs unquantized and this layer quantizes them, with one shared moving-average range.
    """

    def __init__(self, quantize_output=True, quantize_inputs=True, ema_decay=0.999, **kwargs):
        super().__init__(**kwargs)
        self._init_quantizer(quantize_output, ema_decay, quantize_inputs)

    def call(self, inputs, training=None):
        lo, hi = self._range(list(inputs), bool(training))
        inputs = [self._enabled(lambda t=t: _fake_quant(t, lo, hi), t) for t in inputs]
        return super().call(inputs)


class _SameScaleMixin(QuantizerMixin):
    """Ops whose int8 kernel keeps the input scale (AVERAGE_POOL_2D, RESIZE_BILINEAR).

    With `quantize_inputs` the layer owns the range of its input (the producer leaves it
    unquantized) and snaps its output back onto the same grid with the same range, so the
    float model rounds where the int8 kernel rounds and the converter sees one scale.
    Without it (the input tensor is quantized elsewhere) the op runs in float.
    """

    # Snap the output back onto the input grid (see QuantizedAveragePooling2D for why not).
    snap_output = True

    def _same_scale(self, op, inputs, training):
        if not self.quantize_inputs:
            if not self.shared_range:
                return op(inputs)
            # The input is already on the group's grid (its producer quantizes it for its
            # other consumers too): snap the output back onto that grid, as the kernel does.
            lo, hi = self._range([inputs], training)
            x = inputs
        else:
            lo, hi = self._range([inputs], training)
            x = self._enabled(lambda: _fake_quant(inputs, lo, hi), inputs)
        y = op(x)
        if not self.snap_output:
            return y
        return self._enabled(lambda: _fake_quant(y, lo, hi), y)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class QuantizedAveragePooling2D(_SameScaleMixin, keras.layers.AveragePooling2D):
    """`AveragePooling2D` on the input's int8 grid (see `_SameScaleMixin`).

    `snap_output=False` (what `quantize_model` sets unless the pool is a model output) keeps
    the exact average of the int8-grid inputs instead of rounding it with fake-quant. TFLite's
    int8 AVERAGE_POOL_2D rounds the window sum of raw int8 values (zero point included) half
    away from zero, fake-quant rounds half up on its 0..255 grid: on ties below int8 0 (a
    quarter of a 2x2 pool's outputs after a ReLU) the snapped value is 1 LSB above the
    kernel's, always in the same direction, and the next conv sums that bias. The exact
    average is within half an LSB of the kernel, without bias. Measured on conv -> pool ->
    conv/GAP/Dense patterns (3 seeds, reference kernels): output error 0.38 -> 0.27 and
    0.47 -> 0.30 LSB mean. The converter gives the output the input's scale either way.
    """

    def __init__(self, *args, quantize_output=False, quantize_inputs=True, ema_decay=0.999,
                 snap_output=True, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quantizer(False, ema_decay, quantize_inputs)
        self.snap_output = bool(snap_output)
        _check_channels_last(self)

    def call(self, inputs, training=None):
        return self._same_scale(super().call, inputs, bool(training))

    def get_config(self):
        return {**super().get_config(), **self._quantizer_config(),
                "snap_output": self.snap_output}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class QuantizedResizing(_SameScaleMixin, keras.layers.Resizing):
    """Bilinear `Resizing` on the input's int8 grid (see `_SameScaleMixin`)."""

    def __init__(self, *args, quantize_output=False, quantize_inputs=True, ema_decay=0.999,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quantizer(False, ema_decay, quantize_inputs)

    def call(self, inputs, training=None):
        return self._same_scale(super().call, inputs, bool(training))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class QuantizedUpSampling2D(_SameScaleMixin, keras.layers.UpSampling2D):
    """Bilinear `UpSampling2D` (RESIZE_BILINEAR, like `Resizing`) on its input's int8 grid."""

    def __init__(self, *args, quantize_output=False, quantize_inputs=True, ema_decay=0.999,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quantizer(False, ema_decay, quantize_inputs)
        _check_channels_last(self)

    def call(self, inputs, training=None):
        return self._same_scale(super().call, inputs, bool(training))

    def get_config(self):
        return {**super().get_config(), **self._quantizer_config()}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class QuantizedGlobalAveragePooling2D(QuantizerMixin, keras.layers.GlobalAveragePooling2D):
    """`GlobalAveragePooling2D` (TFLite MEAN) with its own int8 output range."""

    def __init__(self, *args, quantize_output=True, quantize_inputs=False, ema_decay=0.999,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quantizer(quantize_output, ema_decay, quantize_inputs)
        _check_channels_last(self)

    def call(self, inputs, training=None):
        y = super().call(inputs)
        if self.quantize_output:
            y = self._quantize_activation(y, bool(training))
        return y


@keras.saving.register_keras_serializable(package=_PACKAGE)
class QuantizeInput(QuantizerMixin, keras.layers.Layer):
    """Fake-quant of a model input: what makes the converted model take int8 input.

    `fixed_range=(0, 255)` for pixel inputs (`quantize_model(input_range=...)`): the file then
    reads uint8 pixels as they are (scale 1), whatever range the calibration images spanned.
    """

    def __init__(self, quantize_output=True, quantize_inputs=False, ema_decay=0.999,
                 fixed_range=None, **kwargs):
        super().__init__(**kwargs)
        if fixed_range is not None:
            self._fixed_range = (float(fixed_range[0]), float(fixed_range[1]))
        self._init_quantizer(True, ema_decay, False)

    def build(self, input_shape):
        self._build_quantizer()

    def call(self, inputs, training=None):
        if self._fixed_range is not None:
            return self._enabled(lambda: _fake_quant(inputs, *self._fixed_range), inputs)
        return self._quantize_activation(inputs, bool(training))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        fixed = None if self._fixed_range is None else list(self._fixed_range)
        return {**super().get_config(), "fixed_range": fixed}


QUANTIZED_LAYERS = (
    QuantizedConv2D, QuantizedDepthwiseConv2D, QuantizedConv2DTranspose, QuantizedDense,
    QuantizedActivation, QuantizedChannelAffine, QuantizedAdd, QuantizedMultiply,
    QuantizedConcatenate,
    QuantizedAveragePooling2D, QuantizedResizing, QuantizedUpSampling2D,
    QuantizedGlobalAveragePooling2D, QuantizeInput,
)


def link_shared_ranges(model):
    """Connects each same-scale group's owner to its members, and each biased layer to its
    input quantizer (whose scale sets the bias grid), by name, in every (nested) functional
    model; returns `model`.

    `quantize_model` and `calibrate` call it. A model from `keras.saving.load_model` is
    unlinked: it predicts and converts exactly as saved, but in training each group keeps the
    range it was saved with, and each bias grid the input scale it was saved with, until this
    is called (its members still observe their own ranges).
    """
    stack, seen = [model], set()
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        for layer in getattr(m, "layers", None) or []:
            if getattr(layer, "layers", None):
                stack.append(layer)
            names = getattr(layer, "range_peers", None)
            if isinstance(layer, QuantizerMixin) and names:
                peers = tuple(m.get_layer(n) for n in names)
                # Plain attribute: peers are not sublayers (no weight tracking, no saving).
                object.__setattr__(layer, "_linked_peers", peers)
            source = getattr(layer, "input_quantizer", None)
            if isinstance(layer, QuantizerMixin) and source:
                object.__setattr__(layer, "_linked_input", m.get_layer(source))
    return model
