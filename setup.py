"""tfkd: knowledge distillation for Keras 3, from `fit` to an int8 TFLite student."""
import pathlib

from setuptools import setup

HERE = pathlib.Path(__file__).parent

# `tflite/` is shipped as the subpackage `tfkd.tflite`: a top-level package named `tflite`
# would collide with the unrelated PyPI package of that name.
PACKAGES = [
    "tfkd",
    "tfkd.data",
    "tfkd.knowledge",
    "tfkd.schemes",
    "tfkd.students",
    "tfkd.quantization",
    "tfkd.tflite",
]

EXTRAS = {
    # Running .tflite files: ai-edge-litert replaces the deprecated tf.lite.Interpreter.
    "tflite": ["ai-edge-litert>=1.2"],
    # Recipes: tfds needs importlib_resources but does not declare it; keras-cv for augmentation.
    "recipes": [
        "tensorflow-datasets>=4.9",
        "importlib_resources>=6",
        "keras-cv>=0.9",
        "matplotlib>=3.7",
        "pillow>=10",
    ],
    # Benchmarks compare our QAT with tfmot, which only quantizes tf_keras (Keras 2) models.
    "benchmarks": ["tensorflow-model-optimization>=0.8", "tf-keras>=2.21,<2.22"],
    # TensorFlow 2.21 no longer installs TensorBoard; keras.callbacks.TensorBoard needs it.
    "test": ["pytest>=8", "pytest-xdist>=3.5", "tensorboard>=2.21"],
    "tensorboard": ["tensorboard>=2.21"],
    # Detection: COCO mAP@[.5:.95] / mAP@0.5 from the reference implementation, not our own.
    "detection": ["pycocotools>=2.0.7"],
    # MediaPipe Tasks: the client an Android app runs, to check exported files with, and the
    # generated TFLite metadata schema code that `tfkd.tflite.metadata` writes with.
    "mediapipe": ["mediapipe>=1.2"],
    # Faces / re-identification: verification ROC, AUC and TAR@FAR from scikit-learn.
    "faces": ["scikit-learn>=1.3"],
}
# `benchmarks` stays out of `all`: tfmot 0.8 pins absl-py~=1.2 and mediapipe needs
# absl-py~=2.3, so pip cannot install both. The tfmot reference of
# benchmarks/quantization.py runs in its own venv: pip install -e ".[benchmarks]".
EXTRAS["all"] = sorted({req for name, reqs in EXTRAS.items() if name != "benchmarks"
                        for req in reqs})

setup(
    name="tfkd",
    version="0.1.0",
    description="Knowledge distillation for Keras 3: teacher to int8 TFLite student.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir={"tfkd.tflite": "tflite"},
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.12",
        "absl-py>=1.4",
        "numpy>=1.26",
    ],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["tfkd-tflite=tfkd.tflite.cli:run"]},
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
