"""Errors raised by `tfkd.tflite`.

Every error derives from `TFLiteError`, itself a `ValueError`, so callers can catch one
class. Each message names the problem and the fix.
"""


class TFLiteError(ValueError):
    """Base class of every error raised by `tfkd.tflite`."""


class ConversionError(TFLiteError):
    """The TFLite converter refused the model, or the arguments to `convert` are wrong."""


class RepresentativeDataError(TFLiteError):
    """Calibration / evaluation data is missing, empty, or has the wrong shape."""


class EmptyDataError(RepresentativeDataError):
    """A data set yielded no sample."""


class QuantizationVerificationError(TFLiteError):
    """An int8 conversion kept float ops, float I/O, or a QUANTIZE/DEQUANTIZE pair inside.

    `problems` holds one dict per offending op: ``{"op", "index", "layer", "reason"}``.
    """

    def __init__(self, message, problems=()):
        super().__init__(message)
        self.problems = list(problems)


class ModelFileError(TFLiteError):
    """A `.tflite` file is missing, unreadable or corrupt."""


class InputDtypeError(TFLiteError):
    """Data of a dtype (or shape) that the `.tflite` model does not take."""


class EdgeTPUError(TFLiteError):
    """The model cannot be compiled for the Edge TPU at all (e.g. dynamic shapes)."""


class EdgeTPUCompilerNotFoundError(EdgeTPUError):
    """`edgetpu_compiler` is not on PATH."""
