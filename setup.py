"""Packaging for simclr_tf."""

from setuptools import find_packages, setup

setup(
    name="simclr_tf",
    version="0.2.0",
    description="SimCLR v1/v2 for TensorFlow 2 and Keras 3: pretraining, linear eval, "
    "fine-tuning and SavedModel export.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    # The top-level configs/ folder is installed as simclr_tf/configs, so that
    # --config=NAME finds the shipped configs from any directory.
    packages=find_packages(include=["simclr_tf", "simclr_tf.*"]) + ["simclr_tf.configs"],
    package_dir={"simclr_tf.configs": "configs"},
    package_data={"simclr_tf.configs": ["*.yaml"]},
    entry_points={"console_scripts": ["simclr-tf=simclr_tf.run:run"]},
    python_requires=">=3.10",
    install_requires=[
        # Tested: TensorFlow 2.21.0 with Keras 3.15.1 (CI installs these). 2.20 is
        # allowed for TPU VMs, where tensorflow-tpu 2.20.0 is the newest release.
        "tensorflow>=2.20,<2.22",
        "keras>=3.15,<4",
        "tensorflow-datasets>=4.9",
        "absl-py",
        "pyyaml",
        "tensorboard",
        "numpy",
        # Image folders: the scan reads each file's header (size, format, EXIF
        # orientation) with Pillow, without decoding it.
        "pillow",
    ],
    extras_require={
        # The test extra holds every optional dependency (study, viz): no test skips in CI.
        "test": ["pytest>=7", "pytest-timeout>=2", "pytest-xdist>=3", "pillow", "nbclient", "nbformat", "ipykernel",
                 "matplotlib", "scikit-learn"],
        "study": ["matplotlib"],
        # python -m simclr_tf.neighbours --map: the t-SNE map of the embeddings.
        "viz": ["scikit-learn"],
        # GPUs: TensorFlow with its CUDA libraries. (No [tpu] extra yet: the
        # tensorflow-tpu distribution ships the same `tensorflow` module as the
        # tensorflow requirement above, so pip would install both over each other;
        # TPU VMs install tensorflow-tpu as colab/pretrain_linear_eval_tpu.ipynb does.)
        "cuda": ["tensorflow[and-cuda]>=2.20,<2.22"],
    },
)
