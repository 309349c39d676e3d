"""Face recognition recipe: distil a wide face embedder into an int8 student that embeds
faces of people it never saw.

    python -m recipes.face_recognition                      # ORL: 30 people train, 10 test
    python -m recipes.face_recognition --student_scale=4    # the student sees 28x23 faces
    python -m recipes.face_recognition --teacher=my_faces.keras --embedding_layer=emb

Protocol (open set, as face papers report): `--test_identities` people (drawn by `--seed`)
are held out; the models train as classifiers of the other identities through a
training-only `CosineHead` with the ArcFace margin loss, and are scored on the held-out
people by their embeddings only: verification over every same / different pair of test faces
(ROC AUC, TAR at FAR = 1e-2 and 1e-1, `verification_accuracy`: the best balanced
accuracy, (TAR + true reject rate) / 2, what a protocol with as many same as different pairs
reports, LFW's, with its `threshold`), and closed-set identification (`rank1`: `--gallery_per_identity` enrolled faces
per person, the others probes). `tfkd.tflite.verification` / `identification` compute them
with scikit-learn's ROC code.

Models: the teacher is `tfkd.students.embedding.face_net` at `--teacher_width` with
`TEACHER_DIM`-d embeddings, or a user's `.keras` model via `--teacher` whose layer
`--embedding_layer` outputs its embedding (its own head, if any, is not used by the
embedding terms); the student is `face_net` at `--student_width` with `--embedding_dim`-d
embeddings. Both take 3-channel faces (ORL's gray repeated): MediaPipe's ImageEmbedder only
runs RGB models. With `--student_scale=f` the student sees the faces downscaled f x
(`tfkd.data.faces.low_resolution`, the Distiller's `student_input`; [87], [99]) while the
teacher sees them whole, and the exported student takes the small faces; with
`--student_scale=1` (the default) a `--low_resolution` x student is distilled too, as a row of
the report.

The exported `.tflite` is the embedder alone (the head cut off): uint8 face in, the
L2-normalised embedding out (L2_NORMALIZATION, int8), with ImageEmbedder metadata; with
`--target=mediapipe` it is checked by running it in MediaPipe's ImageEmbedder. The report
holds the metrics table, the ROC curves of every row, and probe faces with their nearest
gallery faces for the teacher and the int8 student.

The default run takes about 13 minutes on 2 CPU cores (seed 0: teacher ROC AUC 0.991, student
alone 0.980, distilled 0.988, 4x low-resolution distilled 0.974, int8 file 0.990; the mix's
gain measured over 3 identity splits is in `benchmarks/results/face_recognition.md`).
"""
import numpy as np
from absl import app
from absl import flags

from recipes import config
from recipes import flow
from recipes.task import Task

config.define_flags(
    data=str(config.SHARED / "data" / "orl_faces.npz"),
    teacher_arch="face_net", teacher_width=2.0, teacher_epochs=30,
    student="face_net", student_width=1.0,
    # The mix row of benchmarks/face_recognition.py (3 seeds / identity splits).
    knowledge="embedding_kd:weight=5,ekd:weight=5",
    student_loss_weight=1.0,
    epochs=30, batch_size=32, learning_rate=3e-3, augment=True,
    qat_epochs=3, target="mediapipe",
    output_dir="runs/face_recognition",
)
flags.DEFINE_integer("student_scale", 1, "The student sees faces downscaled by this factor "
                                         "(1, 2 or 4); the teacher sees them whole.")
flags.DEFINE_integer("low_resolution", 4, "With --student_scale=1, also distil a student that "
                                          "sees faces downscaled by this factor (0: none).")
flags.DEFINE_integer("test_identities", 10, "People held out for the open-set test.")
flags.DEFINE_integer("gallery_per_identity", 1, "Enrolled faces per test person (rank-1).")
flags.DEFINE_integer("embedding_dim", 64, "Embedding size of the student.")
flags.DEFINE_string("embedding_layer", "embedding", "The teacher's embedding layer (--teacher).")
FLAGS = flags.FLAGS

TEACHER_DIM = 128
SCALES = (1, 2, 4)
# Probe faces in the nearest-gallery picture, and ROC curves' FAR axis floor (log scale).
PICTURE_PROBES, ROC_FLOOR = 6, 1e-3


class FaceRecognitionTask(Task):
    """Faces in, embeddings out: margin-softmax training, open-set verification scores."""

    name = "face_recognition"
    headline = "roc_auc"
    output_meaning = "embedding"
    client_activation = None
    # ORL's faces stop at ~240: a learned input range would not read uint8 pixels at scale 1,
    # which MediaPipe (raw pixels in) needs.
    qat_input_range = (0.0, 255.0)

    def __init__(self, student_scale=1, low_resolution=4, test_identities=10,
                 gallery_per_identity=1, embedding_dim=64, embedding_layer="embedding"):
        self.student_scale, self.low_res = int(student_scale), int(low_resolution)
        self.test_identities, self.gallery_per_identity = test_identities, gallery_per_identity
        self.embedding_dim, self.embedding_layer = embedding_dim, embedding_layer
        self.image_shape, self.gallery, self.probe = None, None, None
        self.test_images = self.test_labels = None
        self.scored = []  # every row's test embeddings, in row order (for the ROC picture)

    # -- configuration ----------------------------------------------------------------------
    def check_config(self, cfg):
        if self.student_scale not in SCALES:
            raise config.RecipeError(f"--student_scale={self.student_scale}: use one of "
                                     f"{SCALES}.")
        if self.low_res not in (0,) + SCALES[1:]:
            raise config.RecipeError(f"--low_resolution={self.low_res}: use 0, 2 or 4.")
        if cfg.student != "face_net" or (not cfg.teacher and cfg.teacher_arch != "face_net"):
            raise config.RecipeError(
                f"--student={cfg.student!r} / --teacher_arch={cfg.teacher_arch!r}: the face "
                "models trained here are 'face_net' (tfkd.students.embedding); give your own "
                "teacher with --teacher=path.keras --embedding_layer=<its embedding layer>.")
        if cfg.batch_size < 8:
            raise config.RecipeError(f"--batch_size={cfg.batch_size}: the identity batches "
                                     "(4 faces of each person) need at least 8.")
        if cfg.cache_teacher:
            raise config.RecipeError("--cache_teacher: the face pipeline draws new identity "
                                     "batches every epoch, so teacher outputs cannot be cached.")

    # -- data -------------------------------------------------------------------------------
    def load(self, cfg):
        from tfkd import data
        from tfkd.data import faces

        x, y, names = faces.load_faces(cfg.data, channels=3)
        train, test = faces.open_set_split(y, self.test_identities, seed=cfg.seed)
        if cfg.max_train:
            train = train[:cfg.max_train]
        if cfg.max_test:
            test = test[:cfg.max_test]
        people = np.unique(y[train])
        index = {p: i for i, p in enumerate(np.unique(y))}
        return data.Splits(
            train=(x[train], faces.relabel(y[train])), test=(x[test], y[test]),
            class_names=[names[index[p]] for p in people],
            source=f"{cfg.data} ({len(people)} training people, "
                   f"{len(np.unique(y[test]))} unseen test people, open set, seed {cfg.seed})")

    def check(self, splits):
        from tfkd import data

        y_test = splits.test[1]
        counts = np.bincount(y_test)
        if len(np.unique(y_test)) < 2 or counts[counts > 0].min() <= self.gallery_per_identity:
            raise data.DataError(
                f"The test split has {len(np.unique(y_test))} people with as few as "
                f"{counts[counts > 0].min()} faces: verification needs 2+ people and "
                f"identification more faces per person than --gallery_per_identity="
                f"{self.gallery_per_identity}. Raise --max_test or --test_identities.")

    def prepare(self, splits):
        from tfkd.data import faces

        self.image_shape = splits.image_shape
        self.test_images, self.test_labels = splits.test  # for the pictures
        self.gallery, self.probe = faces.gallery_probe_split(
            splits.test[1], self.gallery_per_identity, seed=0)

    def _low_resolution(self, factor):
        from tfkd.data import faces

        return faces.low_resolution(factor, self.image_shape) if factor > 1 else None

    def student_input(self):
        return self._low_resolution(self.student_scale)

    def variants(self, cfg):
        if self.student_scale != 1 or not self.low_res:
            return []
        return [(f"low-resolution distilled (x{self.low_res})",
                 self._low_resolution(self.low_res))]

    def dataset(self, x, y, weights, batch_size, augment, seed):
        from tfkd.data import faces

        # P x K identity batches (4 faces of each person): every batch holds the positive
        # pairs that the pair and relation terms compare.
        return faces.face_dataset(x, y, batch_size, augment=augment, seed=seed,
                                  identities_per_batch=max(2, batch_size // 4))

    # -- models -----------------------------------------------------------------------------
    def build_teacher(self, cfg, splits, bn_momentum):
        from tfkd.students import embedding

        return embedding.face_net(splits.image_shape, splits.num_classes, TEACHER_DIM,
                                  width=cfg.teacher_width, bn_momentum=bn_momentum,
                                  name="teacher")

    def check_teacher(self, teacher, splits):
        from tfkd import data

        try:
            layer = teacher.get_layer(self.embedding_layer)
        except ValueError as e:
            raise data.DataError(
                f"The teacher `{teacher.name}` has no layer {self.embedding_layer!r}; name its "
                "embedding layer with --embedding_layer.") from e
        if len(layer.output.shape) != 2:
            raise data.DataError(
                f"The teacher's layer {self.embedding_layer!r} outputs {layer.output.shape}, "
                "not an embedding (batch, D): name the embedding layer with --embedding_layer.")
        if tuple(teacher.input_shape[1:]) != tuple(splits.image_shape):
            raise data.DataError(
                f"The teacher takes {teacher.input_shape[1:]} but the faces are "
                f"{splits.image_shape}: give faces of the teacher's input size.")

    def build_student(self, cfg, splits, input_shape, bn_momentum):
        from tfkd.students import embedding

        return embedding.face_net(tuple(input_shape), splits.num_classes, self.embedding_dim,
                                  width=cfg.student_width, bn_momentum=bn_momentum)

    def loss(self):
        from tfkd.students import embedding

        return embedding.ArcFaceLoss()

    def metrics(self):
        return ["accuracy"]  # of the training identities, on the head's cosines

    # -- evaluation and report --------------------------------------------------------------
    def _embedder(self, model):
        from tfkd.students import embedding

        names = {layer.name for layer in model.layers}
        return embedding.embedding_model(
            model, "embedding" if "embedding" in names else self.embedding_layer)

    def predict(self, model, x):
        import tfkd.tflite as tfl

        return tfl.embeddings(self._embedder(model), x)

    def export_model(self, model):
        return self._embedder(model)

    def tflite_outputs(self, path, x):
        import tfkd.tflite as tfl

        return tfl.embeddings(str(path), x)

    def scores(self, y_true, outputs):
        import tfkd.tflite as tfl

        self.scored.append(np.asarray(outputs))
        v = tfl.verification(outputs, y_true, far=(1e-2, 1e-1))
        ident = tfl.identification(outputs[self.gallery], y_true[self.gallery],
                                   outputs[self.probe], y_true[self.probe])
        return {"roc_auc": v["roc_auc"], "tar@far=0.01": v["tar@far=0.01"],
                "tar@far=0.1": v["tar@far=0.1"],
                "verification_accuracy": v["balanced_accuracy"],
                "threshold": v["balanced_threshold"], "rank1": ident["rank1"]}

    def pictures(self, out_dir, examples):
        # Rows were scored in the order their examples were recorded (flow.add_row).
        names = list(examples["outputs"])
        embeddings = dict(zip(names, self.scored))
        y_test = self.test_labels
        pictures = [(draw_roc(out_dir / "roc.png", embeddings, y_test), "roc.png")]
        shown = {n: embeddings[n] for n in names if n == "teacher" or n.endswith("(.tflite)")}
        if len(shown) >= 1:
            draw_neighbours(out_dir / "neighbours.png", self.test_images, y_test,
                            self.gallery, self.probe, shown)
            pictures.append((f"{PICTURE_PROBES} probe faces of unseen people (left) and the "
                             "nearest gallery face of each model (green: same person, red: "
                             "not).", "neighbours.png"))
        return pictures


def draw_roc(path, embeddings, labels):
    """ROC curves (TAR vs FAR, log FAR axis) of every row in one plot; returns the caption."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import tfkd.tflite as tfl

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, e in embeddings.items():
        fpr, tpr, _ = tfl.roc(e, labels)
        auc = tfl.verification(e, labels)["roc_auc"]
        ax.plot(np.maximum(fpr, ROC_FLOOR), tpr, label=f"{name} (AUC {auc:.3f})")
    ax.set_xscale("log")
    ax.set_xlim(ROC_FLOOR, 1.0)
    ax.set_xlabel("false accept rate (FAR)")
    ax.set_ylabel("true accept rate (TAR)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return ("Verification ROC on every pair of test faces (people unseen in training), one "
            "curve per model.")


def draw_neighbours(path, images, labels, gallery, probe, embeddings):
    """Probe faces, and for each model the nearest gallery face (cosine)."""
    from recipes import report

    rows = []
    for p in probe[:: max(1, len(probe) // PICTURE_PROBES)][:PICTURE_PROBES]:
        row = [images[p]]
        for e in embeddings.values():
            g = gallery[int(np.argmax(e[gallery] @ e[p]))]
            face = images[g].copy()
            colour = (0, 200, 0) if labels[g] == labels[p] else (220, 0, 0)
            face[:3], face[-3:], face[:, :3], face[:, -3:] = colour, colour, colour, colour
            row.append(face)
        rows.append([np.asarray(r, np.uint8) for r in row])
    report.image_grid(path, rows, ["probe"] + [f"{n}: nearest" for n in embeddings],
                      panel_size=(1.6, 1.9))


def main(argv):
    del argv

    def make_task():
        return FaceRecognitionTask(FLAGS.student_scale, FLAGS.low_resolution,
                                   FLAGS.test_identities, FLAGS.gallery_per_identity,
                                   FLAGS.embedding_dim, FLAGS.embedding_layer)

    flow.main(make_task)


if __name__ == "__main__":
    app.run(main)
