"""Offline checks of the Vertex AI job specs in cloud/, the image they run, and the sdist.

Nothing here talks to Google Cloud or builds an image. The specs are custom-container jobs
(containerSpec: the image from cloud/Dockerfile, which installs this package's sdist). They are
checked for the CustomJobSpec shape that `gcloud ai custom-jobs create --config` reads, for
arguments that trainer.task's own parser accepts and configs that load with their overrides,
and for hardware and runtime settings that agree with trainer.training.distribute. The Dockerfile is
checked against setup.py (sdist file name, tensorflow pin, Python version). The sdist test
builds the package from a copy of the repository (so no build/ or *.egg-info lands in the work
tree), installs it into a temporary target and checks that the code and the YAML configs are
where a training job looks for them.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from trainer import config as config_lib
from trainer import task
from trainer.training.distribute import Accelerator

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLOUD = os.path.join(REPO, "cloud")
DOCKERFILE = os.path.join(CLOUD, "Dockerfile")
TPU_DOCKERFILE = os.path.join(CLOUD, "Dockerfile.tpu")

SPECS = sorted(f for f in os.listdir(CLOUD) if f.endswith(".yaml"))
GPU_SPECS = ["single_gpu.yaml", "multi_gpu.yaml", "multi_worker.yaml"]

# Keys a CustomJobSpec may have (the REST reference); a typo here would only fail on submit.
CUSTOM_JOB_SPEC_KEYS = {
    "workerPoolSpecs", "baseOutputDirectory", "scheduling", "serviceAccount", "network",
    "reservedIpRanges", "pscInterfaceConfig", "enableWebAccess", "enableDashboardAccess",
    "tensorboard", "experiment", "experimentRun", "models", "protectedArtifactLocationId",
    "persistentResourceId",
}
WORKER_POOL_KEYS = {"machineSpec", "replicaCount", "containerSpec", "diskSpec", "nfsMounts",
                    "lustreMounts"}
CONTAINER_SPEC_KEYS = {"imageUri", "command", "args", "env"}

# CUDA compute capability of the GPUs the specs use or their comments suggest:
# trainer.training.distribute picks bfloat16 from 8.0 (Ampere) on, float16 below.
COMPUTE_CAPABILITY = {
    "NVIDIA_TESLA_T4": (7, 5), "NVIDIA_L4": (8, 9), "NVIDIA_TESLA_A100": (8, 0),
    "NVIDIA_A100_80GB": (8, 0),
}


def _setup_tree() -> ast.Module:
    with open(os.path.join(REPO, "setup.py"), encoding="utf-8") as f:
        return ast.parse(f.read())


def setup_metadata() -> dict:
    """``name``, ``version`` and ``python_requires`` as setup.py passes them to setup(),
    read without running it."""
    for node in ast.walk(_setup_tree()):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup":
            return {k.arg: ast.literal_eval(k.value) for k in node.keywords
                    if k.arg in ("name", "version", "python_requires")}
    raise AssertionError("setup.py has no setup(...) call")


def install_requires() -> dict[str, Requirement]:
    """setup.py's INSTALL_REQUIRES, by normalised project name."""
    for node in _setup_tree().body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == \
                "INSTALL_REQUIRES":
            reqs = [Requirement(r) for r in ast.literal_eval(node.value)]
            return {re.sub(r"[-_.]+", "-", r.name).lower(): r for r in reqs}
    raise AssertionError("setup.py has no INSTALL_REQUIRES list")


def extras_require() -> dict[str, list[str]]:
    """setup.py's EXTRAS_REQUIRE."""
    for node in _setup_tree().body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == \
                "EXTRAS_REQUIRE":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no EXTRAS_REQUIRE dict")


def sdist_filename() -> str:
    """The sdist file name current setuptools writes (PEP 625: the normalised name with
    underscores, e.g. bert_recommender-0.1.0.tar.gz)."""
    meta = setup_metadata()
    return f"{re.sub(r'[-_.]+', '_', meta['name']).lower()}-{meta['version']}.tar.gz"


def canonical_sdist(filename: str) -> tuple[str, str]:
    """(normalised project name, version) of an sdist file name, hyphen or underscore form."""
    stem = filename[:-len(".tar.gz")]
    name, version = stem.rsplit("-", 1)
    return re.sub(r"[-_.]+", "-", name).lower(), version


def load_spec(name: str) -> dict:
    with open(os.path.join(CLOUD, name), encoding="utf-8") as f:
        return yaml.safe_load(f)


def parsed_args(pool: dict):
    return task._parser().parse_args(pool["containerSpec"]["args"])


def overrides(pool: dict) -> dict:
    """The pool's --set overrides as a dict (key -> raw string value)."""
    return dict(item.split("=", 1) for item in parsed_args(pool).overrides)


def accelerator_overrides(accelerator: Accelerator) -> dict:
    return dict(item.split("=", 1) for item in accelerator.overrides())


def gpu_accelerator(machine: dict) -> Accelerator:
    """What trainer.training.distribute.detect_accelerator() would report on this machine."""
    return Accelerator("gpu", machine["acceleratorCount"],
                       compute_capability=COMPUTE_CAPABILITY[machine["acceleratorType"]])


def keys_with_underscores(node, path=""):
    if isinstance(node, dict):
        for key, value in node.items():
            if "_" in str(key):
                yield f"{path}{key}"
            yield from keys_with_underscores(value, f"{path}{key}.")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from keys_with_underscores(value, f"{path}{i}.")


def dockerfile_instructions(path: str = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) for each instruction, continuation lines joined and comment
    lines dropped, as Docker reads them."""
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f if not line.lstrip().startswith("#")]
    instructions, current = [], ""
    for line in lines:
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            keyword, _, rest = current.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
        current = ""
    return instructions


def dockerfile_arg_defaults(path: str = DOCKERFILE) -> dict:
    return dict(rest.split("=", 1) for keyword, rest in dockerfile_instructions(path)
                if keyword == "ARG" and "=" in rest)


# ---------------------------------------------------------------------------------------
# The job specs.

def test_one_custom_container_spec_per_job():
    assert set(SPECS) == {"single_gpu.yaml", "multi_gpu.yaml", "multi_worker.yaml",
                          "tpu_vm.yaml"}
    # No second copy of a spec in a subfolder (cloud/container/ is gone).
    assert not [d for d in os.listdir(CLOUD) if os.path.isdir(os.path.join(CLOUD, d))]


@pytest.mark.parametrize("name", SPECS)
def test_spec_has_the_custom_job_spec_shape(name):
    spec = load_spec(name)
    assert isinstance(spec, dict) and set(spec) <= CUSTOM_JOB_SPEC_KEYS, sorted(spec)
    # gcloud: "keys with underscore are invalid" in a --config file.
    assert not list(keys_with_underscores(spec))
    pools = spec["workerPoolSpecs"]
    assert isinstance(pools, list) and pools
    for pool in pools:
        # containerSpec only: the prebuilt Python 3.10 executor images cannot install the
        # package (pythonPackageSpec is not a key allowed here).
        assert set(pool) <= WORKER_POOL_KEYS, sorted(pool)
        machine = pool["machineSpec"]
        assert isinstance(machine["machineType"], str) and machine["machineType"]
        assert isinstance(pool["replicaCount"], int) and pool["replicaCount"] >= 1
        if "acceleratorType" in machine:
            assert isinstance(machine["acceleratorCount"], int) and machine["acceleratorCount"] >= 1
        assert set(pool["containerSpec"]) <= CONTAINER_SPEC_KEYS, sorted(pool["containerSpec"])
    # Vertex: the first pool is the primary replica (the chief) and has exactly one replica.
    assert pools[0]["replicaCount"] == 1
    # Every replica of a distributed job runs the same image with the same arguments.
    assert all(pool["containerSpec"] == pools[0]["containerSpec"] for pool in pools)
    output = spec.get("baseOutputDirectory", {}).get("outputUriPrefix", "gs://")
    assert output.startswith("gs://")


@pytest.mark.parametrize("name", SPECS)
def test_container_spec_names_an_image_and_uses_its_entrypoint(name):
    version = setup_metadata()["version"]
    for pool in load_spec(name)["workerPoolSpecs"]:
        container = pool["containerSpec"]
        image = container["imageUri"]
        # REGION-docker.pkg.dev/YOUR_PROJECT/YOUR_REPO/NAME:TAG, tagged with the package version.
        assert re.fullmatch(r"[\w.-]+-docker\.pkg\.dev/[\w-]+/[\w-]+/[\w-]+:[\w.-]+",
                            image), image
        assert image.rsplit(":", 1)[1] == version, image
        # No command: the image's ENTRYPOINT (python -m trainer.task) takes the args.
        assert "command" not in container and container["args"]


def test_gpu_specs_run_the_image_cloud_dockerfile_builds():
    images = {pool["containerSpec"]["imageUri"] for name in GPU_SPECS
              for pool in load_spec(name)["workerPoolSpecs"]}
    assert len(images) == 1, images
    assert ("ENTRYPOINT", '["python", "-m", "trainer.task"]') in dockerfile_instructions()


@pytest.mark.parametrize("name", SPECS)
def test_args_parse_and_the_named_config_loads_with_its_overrides(name):
    for pool in load_spec(name)["workerPoolSpecs"]:
        args = parsed_args(pool)
        assert args.command == "train"
        assert args.model_dir.startswith("gs://YOUR_BUCKET/"), args.model_dir
        # The container's working directory has no configs/: the name must be one of the
        # repo's configs, which the package installs under trainer/configs/.
        assert args.config.startswith("configs/") and os.path.isfile(
            os.path.join(REPO, args.config)), args.config
        cfg = config_lib.load_config(os.path.join(REPO, args.config), args.overrides)
        for key, value in overrides(pool).items():
            group, field = key.split(".")
            assert str(getattr(getattr(cfg, group), field)).lower() == value.lower(), key


@pytest.mark.parametrize("name", ["single_gpu.yaml", "multi_gpu.yaml"])
def test_single_machine_gpu_specs_set_what_detect_accelerator_would(name):
    (pool,) = load_spec(name)["workerPoolSpecs"]
    assert pool["machineSpec"]["acceleratorType"].startswith("NVIDIA_")
    assert overrides(pool) == accelerator_overrides(gpu_accelerator(pool["machineSpec"]))


def test_single_gpu_spec_is_one_machine_one_gpu():
    (pool,) = load_spec("single_gpu.yaml")["workerPoolSpecs"]
    assert pool["replicaCount"] == 1 and pool["machineSpec"]["acceleratorCount"] == 1
    assert overrides(pool)["runtime.strategy"] == "one_device"


def test_multi_gpu_spec_mirrors_over_several_gpus_on_one_machine():
    (pool,) = load_spec("multi_gpu.yaml")["workerPoolSpecs"]
    assert pool["replicaCount"] == 1 and pool["machineSpec"]["acceleratorCount"] > 1
    assert overrides(pool)["runtime.strategy"] == "mirrored"


def test_multi_worker_spec_has_a_chief_pool_and_workers_running_the_same_job():
    pools = load_spec("multi_worker.yaml")["workerPoolSpecs"]
    assert len(pools) >= 2 and sum(p["replicaCount"] for p in pools) >= 2
    assert pools[0]["replicaCount"] == 1  # the chief: TF_CONFIG task type "chief"
    for pool in pools:
        assert pool["containerSpec"]["imageUri"] == pools[0]["containerSpec"]["imageUri"]
        assert pool["containerSpec"]["args"] == pools[0]["containerSpec"]["args"]
        assert pool["machineSpec"] == pools[0]["machineSpec"]
        settings = overrides(pool)
        assert settings["runtime.strategy"] == "multi_worker"
        # Precision as detect_accelerator() would choose for each machine's GPUs.
        expected = accelerator_overrides(gpu_accelerator(pool["machineSpec"]))
        assert settings["runtime.precision"] == expected["runtime.precision"]


def test_tpu_spec_trains_under_jax_with_the_tpu_runtime_settings():
    with open(os.path.join(CLOUD, "tpu_vm.yaml"), encoding="utf-8") as f:
        assert "BLOCKED" not in f.read()
    (pool,) = load_spec("tpu_vm.yaml")["workerPoolSpecs"]  # Vertex: one pool for TPU VMs
    assert pool["replicaCount"] == 1
    machine = pool["machineSpec"]
    assert machine == {"machineType": "ct5lp-hightpu-4t", "tpuTopology": "2x2"}
    # Not the CUDA image: the TPU image is cloud/Dockerfile.tpu's.
    gpu_image = load_spec("single_gpu.yaml")["workerPoolSpecs"][0]["containerSpec"]["imageUri"]
    assert pool["containerSpec"]["imageUri"] != gpu_image
    assert pool["containerSpec"]["imageUri"].rsplit("/", 1)[1].startswith(
        "bert-recommender-tpu:")
    settings = overrides(pool)
    assert settings.items() >= accelerator_overrides(Accelerator("tpu", 0)).items()
    cfg = config_lib.load_config(os.path.join(REPO, parsed_args(pool).config),
                                 parsed_args(pool).overrides)
    assert (cfg.runtime.backend, cfg.runtime.strategy, cfg.runtime.precision) == (
        "jax", "tpu", "mixed_bfloat16")
    assert cfg.train.steps_per_execution > 1


def test_tpu_dockerfile_installs_the_sdist_with_the_tpu_extra_under_jax():
    assert dockerfile_arg_defaults(TPU_DOCKERFILE)["SDIST"] == sdist_filename()
    instructions = dockerfile_instructions(TPU_DOCKERFILE)
    (pip,) = [rest for keyword, rest in instructions
              if keyword == "RUN" and "pip install" in rest]
    assert '"/tmp/pkg/${SDIST}[tpu]"' in pip
    (env,) = [rest for keyword, rest in instructions if keyword == "ENV"]
    assert "KERAS_BACKEND=jax" in env.split()
    # The TPU extra pins the JAX release the CPU extra (and `make test`'s JAX pass) uses.
    extras = extras_require()
    tpu, cpu = Requirement(extras["tpu"][0]), Requirement(extras["jax"][0])
    assert (tpu.name, tpu.extras, cpu.extras) == ("jax", {"tpu"}, {"cpu"})
    assert str(tpu.specifier) == str(cpu.specifier)


# ---------------------------------------------------------------------------------------
# cloud/Dockerfile against setup.py.

def test_dockerfile_installs_the_sdist_setup_py_produces():
    sdist = dockerfile_arg_defaults()["SDIST"]
    assert sdist == sdist_filename()
    instructions = dockerfile_instructions()
    assert ("COPY", "${SDIST} /tmp/pkg/") in instructions
    (pip,) = [rest for keyword, rest in instructions
              if keyword == "RUN" and "pip install" in rest]
    assert '"/tmp/pkg/${SDIST}"' in pip


def test_dockerfile_installs_the_tensorflow_setup_py_pins_with_its_cuda_libraries():
    pin = install_requires()["tensorflow"]
    (version,) = [s.version for s in pin.specifier if s.operator == "=="]
    (pip,) = [rest for keyword, rest in dockerfile_instructions()
              if keyword == "RUN" and "pip install" in rest]
    (requested,) = re.findall(r'"(tensorflow\[[^"]*)"', pip)
    requested = Requirement(requested)
    assert requested.extras == {"and-cuda"}
    assert str(requested.specifier) == f"=={version}"


def test_dockerfile_python_satisfies_python_requires():
    (base,) = [rest for keyword, rest in dockerfile_instructions() if keyword == "FROM"]
    match = re.fullmatch(r"python:(\d+\.\d+)-slim", base)
    assert match, base
    assert SpecifierSet(setup_metadata()["python_requires"]).contains(f"{match.group(1)}.0")


# ---------------------------------------------------------------------------------------
# The sdist: built from a copy of the repository, installed into a temporary target.

_COPY_IGNORE = shutil.ignore_patterns(".*", "runs", "build", "dist", "*.egg-info",
                                      "__pycache__", "venv")


def _missing_build_tools() -> list[str]:
    """What `build --no-isolation` and `pip install --no-build-isolation` need from this
    environment (a Python 3.11 venv has setuptools; the dev extra brings build)."""
    missing = [m for m in ("build", "setuptools") if importlib.util.find_spec(m) is None]
    if "setuptools" not in missing and importlib.util.find_spec("wheel") is None:
        import setuptools  # pylint: disable=import-outside-toplevel
        # setuptools provides bdist_wheel itself from 70.1 on; before that it needs wheel.
        if tuple(int(p) for p in setuptools.__version__.split(".")[:2]) < (70, 1):
            missing.append("wheel")
    return missing


@pytest.fixture(scope="module")
def built_sdist(tmp_path_factory):
    """(path of the sdist built from a copy of the work tree, temporary folder)."""
    missing = _missing_build_tools()
    if missing:
        pytest.skip(f"offline sdist build needs {', '.join(missing)} installed")
    tmp = tmp_path_factory.mktemp("sdist")
    source = tmp / "src"
    shutil.copytree(REPO, source, ignore=_COPY_IGNORE)
    out = tmp / "dist"
    # --no-isolation: use this environment's setuptools, so nothing is downloaded.
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation",
                    "--outdir", str(out), str(source)],
                   check=True, capture_output=True, text=True)
    (sdist,) = out.glob("*.tar.gz")
    return sdist, tmp


def test_sdist_carries_the_training_application(built_sdist):
    sdist, _ = built_sdist
    # Older setuptools names it bert-recommender-0.1.0.tar.gz, newer bert_recommender-...:
    # the same project and version as the packageUris in the specs either way.
    assert canonical_sdist(sdist.name) == canonical_sdist(sdist_filename())
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for required in ("setup.py", "MANIFEST.in", "README.md", "trainer/task.py",
                     "trainer/training/train_lib.py", "trainer/config.py", "models/bert_recommender.py",
                     "models/layers/__init__.py", "explainability/__init__.py",
                     "configs/tiny.yaml", "configs/demo_large.yaml"):
        assert required in names, required
    assert any(n.startswith("models/layers/") and n.endswith(".py") and "__init__" not in n
               for n in names)
    assert not [n for n in names if n.startswith(("tests/", "runs/", "cloud/", ".venv/"))]


def test_sdist_installs_code_and_configs_where_a_job_finds_them(built_sdist):
    sdist, tmp = built_sdist
    target = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
                    "--no-build-isolation", "--no-cache-dir", "--quiet", "--target",
                    str(target), str(sdist)],
                   check=True, capture_output=True, text=True)
    for path in ("trainer/task.py", "trainer/training/train_lib.py",
                 "bert_recommender/models/bert_recommender.py",
                 "bert_recommender/models/layers/__init__.py",
                 "bert_recommender/explainability/__init__.py", "trainer/configs/tiny.yaml",
                 "trainer/configs/demo.yaml", "trainer/configs/demo_large.yaml"):
        assert (target / path).is_file(), path
    # Only the project's own names at the top level: no generic "models", "explainability"
    # or "benchmarks" (checkout scripts) to collide with another distribution's.
    top_level = {p.name for p in target.iterdir()
                 if not p.name.endswith((".dist-info", ".egg-info")) and p.name != "bin"}
    assert top_level == {"trainer", "bert_recommender"}, top_level
    # Every config the specs name is installed, and it resolves from a working directory
    # without configs/, through the fallback trainer.config has for installed packages.
    names = {parsed_args(pool).config for spec in SPECS
             for pool in load_spec(spec)["workerPoolSpecs"]}
    for name in names:
        assert (target / "trainer" / name).is_file(), name
    workdir = tmp / "job_workdir"
    workdir.mkdir()
    probe = ("import sys, trainer.config as c; "
             "assert c.__file__.startswith(sys.argv[1]), c.__file__; "
             "[c.load_config(n) for n in sys.argv[2:]]")
    subprocess.run([sys.executable, "-c", probe, str(target), *sorted(names)],
                   check=True, cwd=workdir, capture_output=True, text=True,
                   env={**os.environ, "PYTHONPATH": str(target)})
