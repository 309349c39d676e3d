"""tensorflow-model-optimization's QAT on a tf_keras copy of a tfkd student: the reference.

Run by `benchmarks/quantization.py` in a subprocess (tfmot only quantizes tf_keras models):

    TF_USE_LEGACY_KERAS=1 python benchmarks/tfmot_reference.py --weights=/tmp/w.npz \
        --tflite=/tmp/tfmot_int8.tflite --train_size=10000 --qat_epochs=2

Rebuilds `tfkd.students.mobile_cnn` (width 1) in tf_keras with the same layer names, loads the
Keras 3 student's float weights from `--weights` (an .npz written by
`quantization.save_weights`: `<layer>:<i>` arrays, plus `check_x` / `check_logits` to prove
the copy computes the same function), applies `tfmot.quantization.keras.quantize_model`,
fine-tunes it with labels on the same pipeline and budget as tfkd's QAT row, converts it with
the TFLite converter (optimizations=DEFAULT, int8 input and output, as the tfmot guide does)
and prints one line `RESULT {json}` with accuracy (Keras QAT model and .tflite) and parity.

Two differences from the Keras 3 student, neither changing the function it computes:
- `Rescaling(1/255)` runs in the data pipeline instead of the model (tfmot has no quantize
  config for Rescaling), so this copy takes pixels in [0, 1], as tfmot's examples do. (Folding
  the scale into the stem conv instead, with [0, 255] input, costs tfmot ~10 points: its input
  range starts at [-6, 6] and its 0.999 moving average reaches only ~42 of 255 in 2 epochs.)
- The `Identity` tap layers (stage1/2/3) are left out: they compute nothing.
"""
import json
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("weights", None, "Float weights (.npz) of the Keras 3 student.")
flags.DEFINE_string("tflite", "/tmp/tfmot_int8.tflite", "Where to write the int8 .tflite.")
flags.DEFINE_integer("train_size", 10000, "First N training images.")
flags.DEFINE_integer("test_size", 10000, "First N test images.")
flags.DEFINE_integer("qat_epochs", 2, "Quantization-aware fine-tuning epochs.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_float("learning_rate", 3e-4, "Peak learning rate of the fine-tune (Adam, cosine).")
flags.DEFINE_integer("seed", 0, "Seed (data order and augmentation).")
flags.DEFINE_bool("augment", True, "Random flips and crops.")
flags.DEFINE_integer("parity_samples", 2000, "Test images for parity.")
flags.DEFINE_integer("calibration_samples", 500, "Unused by tfmot (its ranges train); kept "
                     "for symmetry with the caller's flags.")
flags.mark_flag_as_required("weights")


def mobile_cnn_tf_keras():
    """`tfkd.students.mobile_cnn(width=1)` in tf_keras, same layer names, no Rescaling/Identity
    (inputs are pre-scaled to [0, 1])."""
    import tf_keras
    L = tf_keras.layers

    def cbr(x, filters, strides, name):
        x = L.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                     name=f"{name}_conv")(x)
        x = L.BatchNormalization(name=f"{name}_bn")(x)
        return L.ReLU(name=f"{name}_relu")(x)

    inputs = tf_keras.Input((32, 32, 3), name="image")
    x = cbr(inputs, 16, 1, "stem")
    x = cbr(x, 32, 2, "s2a")
    x = cbr(x, 32, 1, "s2b")
    x = cbr(x, 64, 2, "s3a")
    x = cbr(x, 64, 1, "s3b")
    x = L.GlobalAveragePooling2D(name="pool")(x)
    return tf_keras.Model(inputs, L.Dense(10, name="logits")(x), name="mobile_cnn")


def load_weights(model, path):
    import numpy as np

    with np.load(path) as data:
        stored = {k: data[k] for k in data.files}
    for layer in model.layers:
        n = len(layer.weights)
        if not n:
            continue
        layer.set_weights([stored[f"{layer.name}:{i}"] for i in range(n)])
    scale = np.float32(stored["input_scale"])
    return scale, stored["check_x"] * scale, stored["check_logits"]


def main(argv):
    del argv
    import numpy as np
    import tensorflow as tf
    import tf_keras
    import tensorflow_model_optimization as tfmot

    import tfkd.tflite as tfl

    tf_keras.utils.set_random_seed(FLAGS.seed)
    x_train, y_train = common.load_cifar10("train", FLAGS.train_size)
    x_test, y_test = common.load_cifar10("test", FLAGS.test_size)
    model = mobile_cnn_tf_keras()
    scale, check_x, check_logits = load_weights(model, FLAGS.weights)
    x_train, x_test = x_train * scale, x_test * scale  # the student's Rescaling
    float_diff = float(np.max(np.abs(model.predict(check_x, verbose=0) - check_logits)))

    qat = tfmot.quantization.keras.quantize_model(model)
    steps = FLAGS.qat_epochs * -(-len(x_train) // FLAGS.batch_size)
    qat.compile(tf_keras.optimizers.Adam(
                    tf_keras.optimizers.schedules.CosineDecay(FLAGS.learning_rate, steps)),
                tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
    ds = common.train_dataset(x_train, y_train, FLAGS.batch_size, FLAGS.seed, FLAGS.augment)
    qat.fit(ds, epochs=FLAGS.qat_epochs, verbose=0)
    keras_acc = float(np.mean(np.argmax(qat.predict(x_test, batch_size=500, verbose=0), -1)
                              == y_test))

    converter = tf.lite.TFLiteConverter.from_keras_model(qat)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    content = converter.convert()
    with open(FLAGS.tflite, "wb") as f:
        f.write(content)
    report = tfl.inspect(FLAGS.tflite)
    acc = tfl.evaluate(FLAGS.tflite, (x_test, y_test))["accuracy"]
    par = tfl.parity(qat, FLAGS.tflite, x_test, max_samples=FLAGS.parity_samples)
    print("RESULT " + json.dumps({
        "float_copy_max_abs_diff": float_diff,
        "keras_accuracy": keras_acc,
        "tflite_accuracy": acc,
        "parity": par,
        "ops": sorted({op.name for op in report.ops}),
        "is_fully_int8": bool(getattr(report, "is_fully_int8", False)),
        "size_bytes": os.path.getsize(FLAGS.tflite),
    }), flush=True)


if __name__ == "__main__":
    app.run(main)
