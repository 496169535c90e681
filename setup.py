"""Packaging for simclr_tf."""

from setuptools import find_packages, setup

setup(
    name="simclr_tf",
    version="0.1.0",
    description="SimCLR v1/v2 for TensorFlow 2 and Keras 3: pretraining, linear eval, "
    "fine-tuning and SavedModel export.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["simclr_tf", "simclr_tf.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.16,<2.22",
        "keras>=3.3",
        "tensorflow-datasets>=4.9",
        "absl-py",
        "pyyaml",
        "tensorboard",
        "numpy",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-timeout>=2", "pillow", "nbclient", "nbformat", "ipykernel",
                 "matplotlib"],
        "study": ["matplotlib"],
    },
)
