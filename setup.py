"""Installable package for the explainable BERT recommender.

The pins below are the stack verified to install and work together on Python 3.11
(see docs/design.md, "Stack"). Cloud training jobs expect `setup.py` at the top level with the
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
    # Calibration curve and score histogram PNGs in every run directory.
    "matplotlib==3.11.2",
    # The fairness audit (trainer/responsible/audit_lib.py): per-group metrics through MetricFrame.
    "fairlearn==0.15.0",
    # The privacy spent by DP-SGD (train.privacy). It caps attrs below 24, which the
    # rest of the set accepts (jsonschema needs >= 22.2).
    "dp-accounting==0.6.0",
]

EXTRAS_REQUIRE = {
    # Tests execute the notebooks (nbclient + an ipykernel), build the sdist (build), feed
    # the readers generated files (hypothesis) and run on every core (pytest-xdist: much of
    # a tiny model's step is single-threaded Python and graph tracing).
    "dev": ["pytest>=8.0", "pytest-xdist==3.8.0", "nbclient==0.11.0", "nbformat==5.11.1",
            "ipykernel==7.4.0", "build==1.6.1", "hypothesis==6.170.15"],
    "tfds": ["tensorflow-datasets==4.9.10"],
    "tune": ["keras-tuner==1.4.8"],
    "explain": ["shap==0.51.0"],
    # The approximate item index of `recommend --approximate` and benchmarks/retrieve_latency
    # (faiss builds the HNSW graph; numba compiles the search of it under the user's own
    # logit, trainer/serving/graph_search.py; both install and import beside TensorFlow 2.21
    # and numpy 2.4; numba is the version shap resolves to).
    "ann": ["faiss-cpu==1.15.1", "numba==0.68.1"],
    # TensorBoard's Profile tab, to view traces written with runtime.profile_steps.
    "profile": ["tensorboard-plugin-profile==2.24.2"],
    # The second engine: KERAS_BACKEND=jax / runtime.backend=jax (trainer/backend.py). 0.10.2
    # is the newest JAX for Python 3.11 (0.11+ need 3.12). GPUs: add jax[cuda12]==0.10.2.
    "jax": ["jax[cpu]==0.10.2"],
    # TPUs train under JAX: no TensorFlow 2.21 TPU build exists (tensorflow-tpu stops at
    # 2.20.0). jax[tpu] 0.10.2 resolves to libtpu 0.0.42.1 from PyPI; TensorFlow and
    # tf-text (install_requires) stay on the host for tf.data and tokenization.
    "tpu": ["jax[tpu]==0.10.2"],
}

setup(
    name="bert-recommender",
    version="0.1.0",
    description="Explainable recommendation with pretrained language models (Keras 3 / TensorFlow)",
    # >=3.11: keras 3.15.1, keras-hub 0.32.0, keras-rs 0.4.0 and matplotlib 3.11.2 require it.
    # <3.14: tensorflow 2.21.0 and tensorflow-text 2.21.1 ship wheels for CPython 3.10-3.13
    # only (the full pin set resolves to binary wheels on 3.11 and 3.13, none on 3.14).
    python_requires=">=3.11,<3.14",
    # benchmarks/ is not installed: its scripts run from a checkout (python -m
    # benchmarks.quality ...), and a top-level "benchmarks" package would shadow, or be
    # shadowed by, any other distribution's.
    # models/ and explainability/ are imported as bert_recommender.models and
    # bert_recommender.explainability (package_dir below; bert_recommender is a namespace
    # with no files of its own): top-level "models" or "explainability" packages would
    # shadow, or be shadowed by, any other distribution's. trainer/ keeps its top-level name,
    # the one Vertex AI python-package jobs run (`python -m trainer.task`).
    packages=find_packages(include=["trainer", "trainer.*"]) + ["trainer.configs"] + [
        "bert_recommender." + name for name in find_packages(include=[
            "models", "models.*", "explainability", "explainability.*"])],
    # The top-level configs/ are installed as trainer/configs/*.yaml so a cloud job that only
    # installs the sdist can still pass `--config configs/NAME.yaml` (trainer.config falls back
    # to trainer.config.PACKAGED_CONFIGS_DIR). Data only: configs/ has no __init__.py.
    package_dir={"trainer.configs": "configs",
                 "bert_recommender.models": "models",
                 "bert_recommender.explainability": "explainability"},
    package_data={"trainer.configs": ["*.yaml"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["bert-recommender=trainer.task:main"]},
)
