"""Every scheme under MirroredStrategy on two logical CPU devices (in a fresh process: the
devices must be split before TensorFlow initialises them)."""
import json
import os
import pathlib
import subprocess
import sys

SCRIPT = r'''
import json, sys
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from tiny_models import convnet
from tfkd.knowledge import Hint
from tfkd.schemes import (AdversarialDistillation, DataFree, MultiTeacher, MutualLearning,
                          SelfDistillation)

CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
with np.load(sys.argv[1]) as d:
    x = d["x_train"][:128, ..., None].astype("float32") / 255.0
    y = d["y_train"][:128].astype("int32")


def build(kind):
    t = convnet(width=8, name="teacher", seed=3)
    s = convnet(width=4, name="student", seed=1)
    two = dict(optimizer=keras.optimizers.Adam(1e-3))
    if kind == "mutual":
        m = MutualLearning([s, convnet(width=4, name="peer", seed=2)])
    elif kind == "self":
        m = SelfDistillation(s, ["block1"], hint_layer="block2")
    elif kind == "multi":
        m = MultiTeacher(s, [t, convnet(width=4, name="t2", seed=4)], weighting="learned",
                         hints=[(0, Hint("block2", "block2"))])
    elif kind == "adversarial":
        m = AdversarialDistillation(s, t)
        two["discriminator_optimizer"] = keras.optimizers.Adam(1e-3)
    else:
        m = DataFree(t, s, batch_size=32, generator_width=8)
        two["generator_optimizer"] = keras.optimizers.Adam(1e-3)
    m.compile(loss=CE, metrics=["accuracy"], **two)
    return m


results = {}
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
for kind in ["mutual", "self", "multi", "adversarial", "data_free"]:
    keras.utils.set_random_seed(0)
    single = build(kind).evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = build(kind)
    mirrored = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    if kind == "data_free":
        hist = model.fit(epochs=1, steps_per_epoch=2, verbose=0).history
    else:
        hist = model.fit(x, y, epochs=1, batch_size=32, verbose=0).history
    results[kind] = {"replicas": strategy.num_replicas_in_sync, "single": single,
                     "mirrored": mirrored, "fit": {k: v[-1] for k, v in hist.items()}}
print("RESULTS" + json.dumps(results))
'''


def test_schemes_train_under_mirrored_strategy():
    repo = pathlib.Path(__file__).resolve().parents[2]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([str(repo), str(repo / "tests")]))
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(repo.parent / "shared" / "data" /
                                                            "mnist.npz")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULTS")][-1]
    results = json.loads(line[len("RESULTS"):])
    for kind, r in results.items():
        assert r["replicas"] == 2
        assert all(v == v and abs(v) < 1e6 for v in r["fit"].values()), (kind, r["fit"])
        # Per-replica losses are scaled and unscaled consistently: evaluating the same weights
        # on one device and on two replicas reports the same numbers.
        for key, value in r["single"].items():
            assert abs(r["mirrored"][key] - value) <= 1e-4 * max(1.0, abs(value)), (kind, key, r)
