"""Distribution: MirroredStrategy with `fit`, MultiWorkerMirroredStrategy with
`tfkd.distribute.fit_multi_worker`, checkpoints and resume.

Each scenario runs tests/distribute_worker.py in fresh processes (logical CPU devices and
TF_CONFIG must be set before TensorFlow initialises), with timeouts so that a hang fails the
test. The worker script trains the same tiny teacher/student pair (SoftTargets + Hint) on
the first 128 MNIST images with SGD, global batch 32, no shuffling, and compares with a
single-device run of Keras' `fit` from the same initial weights.

Tolerance: data-parallel SGD computes the same mean gradient as one device, only summed in
another order (per-replica partial sums, then an all-reduce), so float32 rounding is the only
difference. Measured max |w - w_ref| after 8 steps: ~1e-7 (MirroredStrategy, 2 workers),
~4e-7 with momentum 0.9 (resume). We assert 1e-5 on weights and 1e-5 relative on losses: a
wrong replica scaling of a loss term (e.g. a missing or double `1 / num_replicas`) moves
weights by ~1e-2 here.
"""
import ast
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

WORKER = Path(__file__).resolve().parent / "distribute_worker.py"
TIMEOUT = 240
WEIGHT_TOL = 1e-5
LOSS_RTOL = 1e-5


def _env(**extra):
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["CUDA_VISIBLE_DEVICES"] = ""  # CPU replicas only, also on a machine with a GPU
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    """Runs the MirroredStrategy scenarios once (2 logical CPUs) and returns their results."""
    work = tmp_path_factory.mktemp("mirrored")
    out = work / "out.json"
    proc = subprocess.run(
        [sys.executable, str(WORKER), "mirrored", str(out), str(work)],
        env=_env(), capture_output=True, timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-4000:]
    return json.loads(out.read_text())


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def multi_worker(tmp_path_factory):
    """Two worker processes on 127.0.0.1, TF_CONFIG, fit_multi_worker with checkpoints."""
    work = tmp_path_factory.mktemp("multi_worker")
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen(
            [sys.executable, str(WORKER), "worker", str(work / f"out_{index}.json"), str(work)],
            env=_env(TF_CONFIG=tf_config), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        ))
    errors = []
    try:
        for index, proc in enumerate(procs):
            _, err = proc.communicate(timeout=TIMEOUT)
            if proc.returncode != 0:
                errors.append(f"worker {index} rc={proc.returncode}:\n{err.decode()[-3000:]}")
    finally:
        for proc in procs:  # a hang (e.g. a collective waiting for a dead peer) fails here
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert not errors, "\n".join(errors)
    results = [json.loads((work / f"out_{i}.json").read_text()) for i in range(2)]
    weights = []
    for i in range(2):
        with np.load(work / f"weights_{i}.npz") as f:
            weights.append([f[k] for k in sorted(f.files, key=lambda s: int(s.split("_")[1]))])
    return {"work": work, "results": results, "weights": weights}


# -- MirroredStrategy on 2 logical CPU devices ---------------------------------------------------
def test_mirrored_fit_matches_single_device(mirrored):
    assert mirrored["replicas"] == 2
    fit = mirrored["fit"]
    assert fit["moved"] > 1e-3, "the student did not train"
    assert fit["max_diff"] < WEIGHT_TOL, fit
    np.testing.assert_allclose(fit["loss"], mirrored["ref_loss"], rtol=LOSS_RTOL)
    # The KD terms are reported beside the total and the task loss.
    for key in ("loss", "student_loss", f"{mirrored['terms'][0]}_loss"):
        assert key in fit["history_keys"]


def test_fit_multi_worker_single_worker_strategy_matches_fit(mirrored):
    fmw = mirrored["fmw"]
    assert fmw["max_diff"] < WEIGHT_TOL, fmw
    # Logs are read from the metric objects across replicas: the same epoch means as fit.
    np.testing.assert_allclose(fmw["loss"], mirrored["ref_loss"], rtol=LOSS_RTOL)
    # validation_data: after the last epoch, val_* equal Keras' evaluate of the reference.
    for key, value in mirrored["ref_eval"].items():
        np.testing.assert_allclose(fmw["history"][f"val_{key}"][-1], value, rtol=1e-4,
                                   err_msg=key)
    assert mirrored["steps_per_epoch_batches"] == 6


def test_fit_multi_worker_requires_the_strategy_scope(mirrored):
    message = mirrored["scope_error"]
    assert message is not None, "no error for a distiller built outside strategy.scope()"
    assert "strategy.scope()" in message and "MirroredStrategy" in message


def test_resume_skips_the_epochs_already_done(mirrored):
    r = mirrored["resume"]
    assert r["first_epochs"] == [0] and r["h1_epochs"] == [0]
    assert r["second_epochs"] == [1] and r["h2_epochs"] == [1], "epoch 1 was redone"
    assert r["second_batches"] == 4  # one epoch of 128 / 32 steps, not two
    assert r["iterations"] == 8  # optimizer state restored: 4 + 4 steps
    assert r["files_after_1"] == ["epoch-0001.weights.h5", "tfkd_checkpoint.json"]
    assert r["files_after_2"] == ["epoch-0002.weights.h5", "tfkd_checkpoint.json"]
    # Same weights as 2 epochs straight through (SGD with momentum: slots restored too).
    assert r["max_diff"] < WEIGHT_TOL, r


# -- MultiWorkerMirroredStrategy: 2 processes on 127.0.0.1 ---------------------------------------
def test_multi_worker_fit_raises_a_clear_error(multi_worker):
    for r in multi_worker["results"]:
        assert r["fit_error"] is not None, "Distiller.fit ran under MultiWorkerMirroredStrategy"
        assert "tfkd.distribute.fit_multi_worker" in r["fit_error"]
        assert "20585" in r["fit_error"]


def test_multi_worker_workers_agree_and_match_single_process(multi_worker):
    chief, other = multi_worker["results"]
    assert chief["replicas"] == other["replicas"] == 2
    w0, w1 = multi_worker["weights"]
    for a, b in zip(w0, w1):
        np.testing.assert_array_equal(a, b)  # the all-reduce gives every worker the same
    assert chief["moved"] > 1e-3
    assert chief["max_diff"] < WEIGHT_TOL, chief
    # Both workers log the same global epoch means, equal to the single-process run's.
    np.testing.assert_allclose(chief["loss"], other["loss"], rtol=1e-6)
    np.testing.assert_allclose(chief["loss"], chief["ref_loss"], rtol=LOSS_RTOL)
    np.testing.assert_allclose(chief["val_loss"], other["val_loss"], rtol=1e-6)
    np.testing.assert_allclose(chief["val_loss"][-1], chief["ref_eval"]["loss"], rtol=1e-4)


def test_evaluate_multi_worker_matches_single_process(multi_worker):
    chief, other = multi_worker["results"]
    assert chief["eval_before"] == other["eval_before"]
    for key, value in chief["ref_eval_before"].items():
        np.testing.assert_allclose(chief["eval_before"][key], value, rtol=1e-5, err_msg=key)


def test_multi_worker_checkpoints_on_the_chief_only(multi_worker):
    assert [r["is_chief"] for r in multi_worker["results"]] == [True, False]
    ckpt = multi_worker["work"] / "mw_ckpt"
    assert sorted(os.listdir(ckpt)) == ["epoch-0002.weights.h5", "tfkd_checkpoint.json"]
    state = json.loads((ckpt / "tfkd_checkpoint.json").read_text())
    assert state == {"epoch": 2, "weights": "epoch-0002.weights.h5"}
    assert not list(multi_worker["work"].rglob("workertemp_*")), "non-chief left files behind"


def test_docstring_example_runs(tmp_path):
    """The module docstring's train.py runs as is (one worker: no TF_CONFIG)."""
    source = (WORKER.parents[1] / "tfkd" / "distribute.py").read_text()
    doc = ast.get_docstring(ast.parse(source))  # no TensorFlow import in the test process
    start = doc.index("`train.py`")
    lines = doc[doc.index("::", start) + 2:].splitlines()
    block = []
    for line in lines[1:]:
        if line and not line.startswith("    "):
            break
        block.append(line[4:])
    code = "\n".join(block).replace("/shared/ckpt", str(tmp_path / "ckpt"))
    assert "fit_multi_worker" in code
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True,
                          timeout=TIMEOUT, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()[-4000:]
    losses = json.loads(proc.stdout.decode().strip().splitlines()[-1].replace("'", '"'))
    assert len(losses) == 3
    assert (tmp_path / "ckpt" / "tfkd_checkpoint.json").exists()


def test_default_strategy_and_clear_errors_in_process():
    """No strategy at all works; compile outside the scope / no compile: clear errors."""
    import keras
    import tensorflow as tf

    import tfkd
    import tfkd.distribute

    rng = np.random.default_rng(0)
    x = rng.random((32, 8, 8, 1), dtype=np.float32)
    y = rng.integers(0, 4, 32)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)

    def net(width, name):
        inputs = keras.Input((8, 8, 1))
        h = keras.layers.Conv2D(width, 3, activation="relu")(inputs)
        h = keras.layers.GlobalAveragePooling2D()(h)
        return keras.Model(inputs, keras.layers.Dense(4)(h), name=name)

    def distiller():
        return tfkd.Distiller(net(2, "student"), net(4, "teacher"),
                              knowledge=[tfkd.knowledge.SoftTargets(temperature=4.0)])

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    d = distiller()
    d.compile("sgd", loss=loss)
    history = tfkd.distribute.fit_multi_worker(d, ds, epochs=2, verbose=0)
    assert history.epoch == [0, 1] and len(history.history["soft_targets_loss"]) == 2

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        d = distiller()
    with pytest.raises(ValueError, match="not compiled"):
        tfkd.distribute.fit_multi_worker(d, ds, verbose=0)
    d.compile("sgd", loss=loss)  # outside the scope
    with pytest.raises(ValueError, match=r"compile\(\) ran outside its scope"):
        tfkd.distribute.fit_multi_worker(d, ds, verbose=0)
    with pytest.raises(TypeError, match="tf.data.Dataset"):
        with strategy.scope():
            d = distiller()
            d.compile("sgd", loss=loss)
        tfkd.distribute.fit_multi_worker(d, (x, y), verbose=0)
