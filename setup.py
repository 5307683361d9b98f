"""Installable package for the explainable BERT recommender.

The pins below are the stack verified to install and work together on Python 3.11
(see DESIGN.md). Cloud training jobs expect `setup.py` at the top level with the
`trainer` package beside it.
"""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "tensorflow==2.21.0",
    "keras==3.15.1",
    "keras-hub==0.32.0",
    # Required, not optional: keras-hub tokenizers inside tf.data and SavedModels with
    # in-graph tokenization both need its ops.
    "tensorflow-text==2.21.1",
    "tensorboard==2.21.0",
    # keras-hub needs it to convert Hugging Face checkpoints but does not declare it.
    "safetensors==0.8.0",
    "keras-rs==0.4.0",
    "numpy>=1.26",
    "PyYAML>=6.0",
]

EXTRAS_REQUIRE = {
    "dev": ["pytest>=8.0"],
    "tfds": ["tensorflow-datasets==4.9.10"],
    "tune": ["keras-tuner==1.4.8"],
    "explain": ["shap==0.51.0"],
    # Colab/Cloud TPU VMs bring their own libtpu; nothing extra is pinned here.
    "tpu": [],
}

setup(
    name="bert-recommender",
    version="0.1.0",
    description="Explainable recommendation with pretrained language models (Keras 3 / TensorFlow)",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["trainer", "trainer.*", "models", "models.*",
                                    "explainability", "explainability.*",
                                    "benchmarks", "benchmarks.*"]),
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["bert-recommender=trainer.task:main"]},
)
