"""The notebooks in notebooks/ and colab/: stored clean, and every cell runs on tiny sizes
(colab/gpu.ipynb's through colab/tpu.ipynb's, which they equal but for the backend knob).

Each notebook's first code cell is tagged ``parameters`` (papermill's convention) and holds
every knob. To execute a notebook the test replaces that cell's source with tiny values (a
run directory under tmp_path, the micro overrides of tests/conftest.py, a MovieLens fixture
written by the helpers of tests/trainer/data/test_movielens.py), drops exactly the cells
tagged ``colab`` (installs, Drive, Cloud auth, downloads: they need Colab or the network) or
``interactive`` (TensorBoard and HTML for a browser), and runs every other cell with nbclient
in a fresh ``python3`` kernel, which jupyter_client starts with this interpreter.
"""

from __future__ import annotations

import ast
import concurrent.futures
import glob
import json
import os
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

from tests.harness import MICRO_OVERRIDES, REPO  # noqa: E402  (after the skips)
from tests.trainer.data.test_movielens import (  # noqa: E402
    make_movies, make_ratings, write_csv_variant)

NOTEBOOKS = sorted(os.path.relpath(p, REPO) for pattern in ("notebooks/*.ipynb", "colab/*.ipynb")
                   for p in glob.glob(os.path.join(REPO, pattern)))
COLAB_ACCELERATORS = {"colab/gpu.ipynb": "GPU", "colab/tpu.ipynb": "TPU"}
# The GPU notebook's code is the TPU notebook's without its backend knob (checked line by
# line below), so running it would only run the TPU notebook's cells under TensorFlow, whose
# library calls the other notebooks run: it is not executed (about 80 s of kernel on 2 cores).
EXECUTED = [p for p in NOTEBOOKS if p != "colab/gpu.ipynb"]
# Every line in which the two Colab notebooks' code cells differ (difflib.ndiff over them).
GPU_ONLY_LINES = [
    'EXPECTED_ACCELERATOR = "gpu"  # "" to run on whatever the runtime offers',
    '!pip install -q "bert-recommender[tune,explain] @ git+{REPO_URL}" {EXTRA_PIP}']
TPU_ONLY_LINES = [
    'EXPECTED_ACCELERATOR = "tpu"  # "" to run on whatever the runtime offers',
    '# Keras backend: "jax" trains on the TPU; "tensorflow" cannot (no TF 2.21 TPU build).',
    'BACKEND = "jax"',
    '!pip install -q "bert-recommender[tune,explain,tpu] @ git+{REPO_URL}" {EXTRA_PIP}',
    '',
    '# Before anything imports Keras (TensorFlow imports it too): the backend is fixed then.',
    'os.environ["KERAS_BACKEND"] = BACKEND']
SKIP_TAGS = ("colab", "interactive")
KNOWN_TAGS = set(SKIP_TAGS) | {"parameters", "download"}
# What a skipped cell may contain: a retagged training or explain cell would match none of
# these, so a tag cannot silently skip the notebook's real work.
SKIPPABLE_MARKERS = {"colab": ("google.colab", "!pip", "movielens.download("),
                     "interactive": ("%tensorboard", "HTML(")}
CELL_TIMEOUT_S = 600
# The MovieLens fixture has 8 users with >= 5 positives among 40 movies, each rating 12.
MOVIELENS_FIXTURE_OVERRIDES = ["data.movielens.min_positives=3",
                               "data.movielens.eval_negatives=10", "train.epochs=1"]


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------

def read_notebook(relpath: str):
    nb = nbformat.read(os.path.join(REPO, relpath), as_version=4)
    nbformat.validate(nb)
    return nb


def tags(cell) -> set:
    return set(cell.get("metadata", {}).get("tags", []))


def code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def parameters_cell(nb):
    """The notebook's first code cell, which must be the only one tagged ``parameters``."""
    tagged = [c for c in code_cells(nb) if "parameters" in tags(c)]
    assert len(tagged) == 1, "exactly one code cell must be tagged 'parameters'"
    assert code_cells(nb)[0] is tagged[0], "the 'parameters' cell must be the first code cell"
    return tagged[0]


def assigned_names(source: str) -> set:
    """Names assigned at the top level of ``source`` (the notebook's knobs)."""
    names = set()
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else [])
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def parameters_source(values: dict) -> str:
    """Replacement source for the ``parameters`` cell: the kernel imports this checkout and
    reports its interpreter, then every knob gets its test value."""
    lines = ["import sys",
             f"sys.path.insert(0, {REPO!r})  # the kernel imports this checkout",
             'print("kernel python:", sys.executable)']
    lines += [f"{name} = {value!r}" for name, value in values.items()]
    return "\n".join(lines) + "\n"


def prepare(relpath: str, values: dict):
    """The notebook with its parameters replaced and the ``colab``/``interactive`` cells
    dropped; returns ``(notebook, dropped cells)``."""
    nb = read_notebook(relpath)
    cell = parameters_cell(nb)
    missing = assigned_names(cell.source) - set(values)
    assert not missing, f"{relpath}: the test sets no value for parameters {sorted(missing)}"
    unknown = set(values) - assigned_names(cell.source)
    assert not unknown, f"{relpath}: {sorted(unknown)} are not parameters of the notebook"
    cell.source = parameters_source(values)
    dropped = [c for c in nb.cells if tags(c) & set(SKIP_TAGS)]
    nb.cells = [c for c in nb.cells if not tags(c) & set(SKIP_TAGS)]
    return nb, dropped


def execute(relpath: str, values: dict):
    """Runs the prepared notebook in its own folder (as Jupyter would); returns
    ``(executed notebook, dropped cells)``."""
    nb, dropped = prepare(relpath, values)
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
        resources={"metadata": {"path": os.path.join(REPO, os.path.dirname(relpath))}})
    client.execute()
    return nb, dropped


def stdout_text(nb) -> str:
    out = []
    for cell in code_cells(nb):
        for output in cell.get("outputs", []):
            if output.output_type == "stream" and output.name == "stdout":
                out.append(output.text)
            elif output.output_type in ("execute_result", "display_data"):
                out.append(output.get("data", {}).get("text/plain", ""))
    return "".join(out)


def metrics_table(run_dir: str) -> str:
    from trainer.training import train_lib
    with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as f:
        return train_lib.format_metrics_table(json.load(f))


def write_movielens_fixture(root) -> str:
    """A tiny ml-latest-small-layout directory (ratings.csv, movies.csv, tags.csv)."""
    return write_csv_variant(os.path.join(str(root), "ml-latest-small"), make_ratings(),
                             make_movies(), tags=[(1, 3, "classic"), (2, 3, "funny"),
                                                  (3, 7, "classic")])


# ---------------------------------------------------------------------------------------
# Test values for each notebook's parameters
# ---------------------------------------------------------------------------------------

def params_quickstart(tmp) -> dict:
    return {"CONFIG": os.path.join(REPO, "configs", "tiny.yaml"),
            "OVERRIDES": list(MICRO_OVERRIDES),
            "MODEL_DIR": os.path.join(tmp, "quickstart"),
            "NUM_EXAMPLES": 2,
            "EXPLAIN_METHODS": None,
            "USER_TEXTS": ["acme wireless retro laptop new", "i want a watch"],
            "ITEM_TEXTS": ["globex wireless gaming laptop pro", "stark compact watch"]}


def params_movielens(tmp, data_dir) -> dict:
    return {"CONFIG": os.path.join(REPO, "configs", "movielens_tiny.yaml"),
            "DATA_DIR": data_dir,
            "MOVIELENS_VARIANT": "ml-latest-small",
            "CACHE_DIR": os.path.join(tmp, "downloads"),
            "OVERRIDES": list(MOVIELENS_FIXTURE_OVERRIDES),
            "MODEL_ROOT": os.path.join(tmp, "movielens"),
            "BASELINES": ["mf", "popularity"],
            "NUM_EXAMPLES": 2,
            "EXPLAIN_METHODS": None}


# No cell of the Colab notebooks reads a SavedModel, and the export of a run (under JAX a
# TensorFlow child process per run) is tested on both engines elsewhere
# (tests/trainer/test_backends.py): their runs skip it, which saves CI about a minute.
COLAB_TEST_OVERRIDES = ["train.export=false"]


def params_colab(tmp, data_dir, kind) -> dict:
    # The TPU notebook trains under JAX (its BACKEND knob), so CI runs that path on CPU.
    backend = {"BACKEND": "jax"} if kind == "tpu" else {}
    return backend | {"REPO_URL": "https://example.invalid/unused.git",  # its cell is tagged colab
            "EXTRA_PIP": "",
            "MOUNT_DRIVE": False,
            "MODEL_ROOT": os.path.join(tmp, f"colab_{kind}"),
            "DATA_DIR": data_dir,
            "MOVIELENS_VARIANT": "ml-latest-small",
            "CACHE_DIR": os.path.join(tmp, "downloads"),
            "DEMO_CONFIG": os.path.join(REPO, "configs", "tiny.yaml"),
            "DEMO_OVERRIDES": MICRO_OVERRIDES + COLAB_TEST_OVERRIDES,
            "MOVIELENS_CONFIG": os.path.join(REPO, "configs", "movielens_tiny.yaml"),
            # No hub download: a random-init text model on the fixture.
            "MOVIELENS_OVERRIDES": (MOVIELENS_FIXTURE_OVERRIDES + ['model.pretrained=""']
                                    + COLAB_TEST_OVERRIDES),
            "NUM_EXAMPLES": 2,
            "EXPLAIN_METHODS": None,
            "EXPECTED_ACCELERATOR": ""}


def values_for(relpath: str, tmp: str, data_dir: str) -> dict:
    if relpath == "notebooks/quickstart.ipynb":
        return params_quickstart(tmp)
    if relpath == "notebooks/movielens.ipynb":
        return params_movielens(tmp, data_dir)
    if relpath in COLAB_ACCELERATORS:
        return params_colab(tmp, data_dir, COLAB_ACCELERATORS[relpath].lower())
    raise AssertionError(f"{relpath}: add its test parameters to tests/notebooks")


# ---------------------------------------------------------------------------------------
# Executed notebooks: all of them run concurrently, once per session
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("notebooks")
    return str(tmp), write_movielens_fixture(tmp / "data")


@pytest.fixture(scope="module")
def executions(request, workdir):
    """``relpath -> Future`` of :func:`execute` for the notebooks this session runs.

    Only the notebooks whose test is selected are started, two at a time (up to four on
    bigger machines; ``NOTEBOOK_WORKERS`` overrides): each kernel spends much of its time
    single-threaded (imports, graph tracing), so two keep two cores busy.
    """
    tmp, data_dir = workdir
    wanted = [p for p in EXECUTED
              if any(getattr(item, "callspec", None) is not None
                     and item.callspec.params.get("relpath") == p
                     and item.originalname == "test_notebook_runs"
                     for item in request.session.items)]
    workers = int(os.environ.get("NOTEBOOK_WORKERS", 0)) or max(2, min(4, os.cpu_count() or 2))
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
    futures = {p: pool.submit(execute, p, values_for(p, tmp, data_dir)) for p in wanted}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


def test_movielens_fixture_loads_with_the_tiny_config(workdir):
    """The fixture the notebooks train on is a layout the loader accepts with
    configs/movielens_tiny.yaml and the test overrides."""
    from trainer import config as config_lib
    from trainer.data import movielens

    tmp, data_dir = workdir
    cfg = config_lib.load_config(os.path.join(REPO, "configs", "movielens_tiny.yaml"),
                                 [f"data.data_dir={data_dir}"] + MOVIELENS_FIXTURE_OVERRIDES)
    data = movielens.load(data_dir, cfg.data.movielens)
    assert data.info["variant"] == "ml-latest-small"
    assert data.info["users"]["kept"] == 8
    assert {name: len(examples) > 0 for name, examples in data.splits.items()} == {
        "train": True, "validation": True, "test": True}


@pytest.mark.slow
@pytest.mark.parametrize("relpath", EXECUTED)
def test_notebook_runs(relpath, executions, workdir):
    from trainer.training import distribute

    nb, dropped = executions[relpath].result()
    tmp, _ = workdir
    values = values_for(relpath, tmp, "")

    # Exactly the tagged cells were dropped, each one Colab-only or browser-only content.
    assert dropped, f"{relpath}: expected cells tagged {SKIP_TAGS}"
    for cell in dropped:
        markers = [m for tag in tags(cell) & set(SKIP_TAGS) for m in SKIPPABLE_MARKERS[tag]]
        assert any(m in cell.source for m in markers), (
            f"{relpath}: cell {cell.id} is tagged {sorted(tags(cell))} but holds none of "
            f"{markers}; only Colab-only or interactive cells may carry those tags")
    assert any("%tensorboard" in c.source for c in dropped), f"{relpath}: no TensorBoard cell"
    if relpath != "notebooks/quickstart.ipynb":
        assert any("movielens.download(" in c.source for c in dropped), (
            f"{relpath}: no download cell")
    # Every other code cell ran, without an error output.
    for cell in code_cells(nb):
        assert cell.execution_count is not None, f"{relpath}: cell {cell.id} did not run"
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"{relpath}: cell {cell.id} raised {errors[0].ename}"
    out = stdout_text(nb)
    assert "kernel python: " + sys.executable in out, "the kernel is not this interpreter"

    if relpath == "notebooks/quickstart.ipynb":
        run = values["MODEL_DIR"]
        run_dirs = [run]
        assert metrics_table(run) in out
        assert "epoch_loss" in out  # the scalars read from the event files
        for user in values["USER_TEXTS"]:  # the SavedModel's predictions
            assert f"user: {user!r}" in out
    elif relpath == "notebooks/movielens.ipynb":
        run_dirs = [os.path.join(values["MODEL_ROOT"], kind)
                    for kind in ["bert"] + values["BASELINES"]]
        for run in run_dirs:
            assert metrics_table(run) in out
        assert "ndcg@10" in out and "popularity" in out
    else:
        root = values["MODEL_ROOT"]
        run_dirs = [os.path.join(root, "demo"), os.path.join(root, "movielens")]
        for run in run_dirs:
            assert metrics_table(run) in out
        expected = distribute.detect_accelerator()  # "cpu" on a machine without GPU/TPU
        assert f"accelerator: {expected.kind}" in out
        assert f"overrides: {expected.overrides()!r}" in out
        assert "epoch_loss" in out
    exported = relpath not in COLAB_ACCELERATORS  # COLAB_TEST_OVERRIDES
    for run in run_dirs:
        assert os.path.isfile(os.path.join(run, "metrics.json"))
        assert os.path.isfile(os.path.join(run, "export", "saved_model.pb")) == exported
    explained = [r for r in run_dirs if os.path.basename(r) not in ("mf", "popularity")]
    for run in explained:
        assert os.path.isfile(os.path.join(run, "explanations", "faithfulness.json"))
    assert out.count("token attributions (2 examples)") == len(explained)


# ---------------------------------------------------------------------------------------
# The stored notebooks
# ---------------------------------------------------------------------------------------

def test_there_are_notebooks():
    assert {"notebooks/quickstart.ipynb", "notebooks/movielens.ipynb",
            *COLAB_ACCELERATORS} <= set(NOTEBOOKS)


@pytest.mark.parametrize("relpath", NOTEBOOKS)
def test_notebook_is_stored_clean(relpath):
    """Valid nbformat v4, no outputs or execution counts, known tags, no logic of its own."""
    nb = read_notebook(relpath)
    assert nb.nbformat == 4
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    parameters_cell(nb)
    for cell in nb.cells:
        assert not tags(cell) - KNOWN_TAGS, f"{relpath}: unknown tags {tags(cell) - KNOWN_TAGS}"
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [], f"{relpath}: cell {cell.id} has stored outputs"
        assert cell.execution_count is None, f"{relpath}: cell {cell.id} has an execution count"
        assert "execution" not in cell.metadata, f"{relpath}: cell {cell.id} stores timings"
        # Notebooks call into the packages; functions and classes belong in trainer/,
        # models/ or explainability/.
        for line in cell.source.splitlines():
            assert not line.lstrip().startswith(("def ", "class ", "async def ")), (
                f"{relpath}: cell {cell.id} defines {line.strip()!r}; move it into a package")


def test_the_gpu_notebook_is_the_tpu_notebook_on_tensorflow():
    """What stands in for executing colab/gpu.ipynb: its code cells, tags included, are
    the TPU notebook's but for the backend knob, the expected accelerator and the pip
    extra, so an edit to one Colab notebook's code that misses the other fails here."""
    import difflib

    def code_lines(relpath):
        lines = []
        for cell in code_cells(read_notebook(relpath)):
            lines += [f"<code cell tagged {sorted(tags(cell))}>", *cell.source.splitlines()]
        return lines

    diff = list(difflib.ndiff(code_lines("colab/gpu.ipynb"), code_lines("colab/tpu.ipynb")))
    assert [line[2:] for line in diff if line.startswith("- ")] == GPU_ONLY_LINES
    assert [line[2:] for line in diff if line.startswith("+ ")] == TPU_ONLY_LINES


@pytest.mark.parametrize("relpath", sorted(COLAB_ACCELERATORS))
def test_colab_notebook_metadata_and_cells(relpath):
    nb = read_notebook(relpath)
    assert nb.metadata.get("accelerator") == COLAB_ACCELERATORS[relpath]
    assert "colab" in nb.metadata
    sources = {c.id: c.source for c in code_cells(nb)}
    tagged = {c.id: tags(c) for c in code_cells(nb)}
    assert any("detect_accelerator()" in s and ".overrides()" in s
               and not tagged[i] & set(SKIP_TAGS) for i, s in sources.items())
    assert any("%load_ext tensorboard" in s and "%tensorboard --logdir" in s
               and "interactive" in tagged[i] for i, s in sources.items())
    for marker in ("!pip install", "drive.mount(", "auth.authenticate_user()",
                   "movielens.download("):
        cells = [i for i, s in sources.items() if marker in s]
        assert cells and all("colab" in tagged[i] for i in cells), (
            f"{relpath}: the {marker!r} cell must exist and be tagged colab")
    params = parameters_cell(nb).source
    assert "REPO_URL" in assigned_names(params)
    assert "configs/demo_large.yaml" in params and "configs/movielens_minilm.yaml" in params
