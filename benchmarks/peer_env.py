"""The PyTorch peer of the throughput benchmark: its virtual environment and a client for it.

The throughput benchmark compares our BERTRecommender (Keras 3 / TensorFlow) with the same
architecture in PyTorch + transformers (``benchmarks/torch_peer.py``). The peer runs in a
**separate virtual environment and a separate process**, never in this one:

* TensorFlow and torch in one process fight over threads and memory: each brings its own
  OpenMP / intra-op pool sized to the machine, and the two pools oversubscribe the cores (and
  spin against each other) even while only one framework is working, so both numbers would
  be wrong. Each framework also keeps its own allocator caches.
* The pins differ: the peer needs a CPU build of torch and a transformers release (with their
  own numpy, tokenizers, huggingface-hub ...) that must not move this repository's
  TensorFlow/Keras requirements, and vice versa.

``ensure_peer_env(path)`` creates that environment once (``python -m venv`` + one pinned
``pip install``) and leaves a marker file listing the pins, so later calls with the same pins
return at once. ``PeerWorker`` starts ``torch_peer.py`` with the environment's python, keeps
it alive and asks it for timed windows of training steps over a line-based JSON protocol
(see ``torch_peer.py``); while it waits for the next request the worker sleeps on its stdin,
so it does not take CPU from the measurement that is interleaved with it.

    py = ensure_peer_env("/tmp/peer_venv")
    with PeerWorker(py, {"num_layers": 2, "hidden": 64, "heads": 2, "intermediate": 256,
                         "vocab": 30522}, seq=128, batch=16, threads=2) as peer:
        peer.info          # the ready line: torch / transformers versions, params, ...
        peer.window(5)     # {"steps": 5, "seconds": ..., "examples_per_s": ..., "loss": ...}
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import subprocess
import sys
import tempfile
import threading
import time

# Pinned together and checked together (torch 2.13.0+cpu with transformers 5.24.0 builds and
# trains BertForSequenceClassification on Python 3.11). transformers' own model-path
# dependencies are pinned too, so the peer does not change under us; the rest of the
# dependency tree is left to pip.
TORCH_REQUIREMENT = "torch==2.13.0+cpu"
TORCH_FALLBACK_REQUIREMENT = "torch==2.13.0"  # used when no "+cpu" build can be found
PEER_REQUIREMENTS = [
    TORCH_REQUIREMENT,
    "transformers==5.24.0",
    "tokenizers==0.23.3",
    "huggingface-hub==2.4.0",
    "safetensors==0.8.0",
    "numpy==2.4.6",
]

MARKER_NAME = "peer-requirements.json"
INSTALL_TIMEOUT_S = 1800.0
VENV_TIMEOUT_S = 300.0
CHECK_TIMEOUT_S = 300.0
OUTPUT_TAIL_LINES = 40

WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_peer.py")
SIZE_KEYS = ("num_layers", "hidden", "heads", "intermediate", "vocab")
# Accepted spellings of SIZE_KEYS (ours: BERTRecommender.from_sizes / ModelConfig; theirs:
# BertConfig).
SIZE_ALIASES = {
    "num_layers": "num_layers", "num_hidden_layers": "num_layers", "layers": "num_layers",
    "hidden": "hidden", "hidden_dim": "hidden", "hidden_size": "hidden",
    "heads": "heads", "num_heads": "heads", "num_attention_heads": "heads",
    "intermediate": "intermediate", "intermediate_dim": "intermediate",
    "intermediate_size": "intermediate",
    "vocab": "vocab", "vocabulary_size": "vocab", "vocab_size": "vocab",
}
_FALLBACK_SIGNS = ("No matching distribution found for torch",
                   "Could not find a version that satisfies the requirement torch")


# --- the environment -------------------------------------------------------------------------

def venv_python_path(path: str) -> str:
    """The python executable of the virtual environment at ``path``."""
    if os.name == "nt":
        return os.path.join(path, "Scripts", "python.exe")
    return os.path.join(path, "bin", "python")


def peer_install_command(venv_python: str, requirements=None) -> list[str]:
    """The pip command that installs the peer's pins into the environment of ``venv_python``."""
    requirements = PEER_REQUIREMENTS if requirements is None else requirements
    return [venv_python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            "--no-input", *requirements]


def fallback_requirements(requirements) -> list[str]:
    """``requirements`` with the CPU-only torch pin replaced by the plain release pin."""
    return [TORCH_FALLBACK_REQUIREMENT if r == TORCH_REQUIREMENT else r for r in requirements]


def marker_path(path: str) -> str:
    return os.path.join(path, MARKER_NAME)


def read_marker(path: str) -> dict | None:
    """The marker of the environment at ``path`` (``None`` if absent or unreadable)."""
    try:
        with open(marker_path(path), encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def write_marker(path: str, requirements, installed=None, versions=None) -> None:
    """Record that ``requirements`` were installed (``installed``: the pins pip actually got,
    when a fallback was used; ``versions``: what the environment reports)."""
    marker = {"requirements": list(requirements),
              "installed": list(requirements if installed is None else installed),
              "versions": versions or {}}
    tmp = marker_path(path) + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(marker, f, indent=1)
        f.write("\n")
    os.replace(tmp, marker_path(path))


def is_peer_env_ready(path: str, requirements=None) -> bool:
    """Whether ``path`` holds an environment installed with exactly ``requirements``."""
    requirements = PEER_REQUIREMENTS if requirements is None else requirements
    marker = read_marker(path)
    return (marker is not None and marker.get("requirements") == list(requirements)
            and os.path.exists(venv_python_path(path)))


def _tail(text, lines=OUTPUT_TAIL_LINES) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return "\n".join((text or "").rstrip().splitlines()[-lines:])


def _run(cmd, timeout, what):
    """Run ``cmd`` (output captured); RuntimeError naming the command on failure or timeout."""
    try:
        result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{what} timed out after {timeout:.0f} s: {shlex.join(cmd)}\n"
                           f"{_tail(exc.output)}") from None
    except OSError as exc:
        raise RuntimeError(f"{what} could not start: {shlex.join(cmd)}: {exc}") from None
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {result.returncode}): {shlex.join(cmd)}\n"
                           f"{_tail(result.stdout)}")
    return result.stdout or ""


_CHECK_CODE = ("import json, torch, transformers; "
               "print(json.dumps({'torch': torch.__version__, "
               "'transformers': transformers.__version__}))")


def ensure_peer_env(path: str, python: str = sys.executable, log=print, *,
                    requirements=None, timeout: float = INSTALL_TIMEOUT_S,
                    check_code: str = _CHECK_CODE) -> str:
    """Make the peer's virtual environment at ``path`` if needed; return its python.

    Creates the environment with ``python -m venv`` if it has no python, installs
    ``requirements`` (``PEER_REQUIREMENTS``) with one quiet ``pip install`` (retrying with
    ``torch==2.13.0`` if pip finds no ``+cpu`` build), checks that the peer imports (runs
    ``check_code``, by default importing torch and transformers; its last output line, a JSON
    object of versions, goes into the marker), and writes a marker with the pins. When the marker already lists the same pins the
    call does nothing. Every step is a subprocess with a timeout; a failed or timed-out step
    raises RuntimeError with the command and the tail of its output.

    Why a separate environment, see the module docstring: TensorFlow and torch in one process
    fight over threads and memory, and the peer's pins differ from this repository's.
    """
    requirements = list(PEER_REQUIREMENTS if requirements is None else requirements)
    path = os.path.abspath(path)
    venv_python = venv_python_path(path)
    if is_peer_env_ready(path, requirements):
        return venv_python
    start = time.perf_counter()
    if os.path.exists(marker_path(path)):
        os.remove(marker_path(path))  # stale pins: not ready until the install succeeds
    if not os.path.exists(venv_python):
        log(f"peer env: creating a virtual environment at {path}")
        _run([python, "-m", "venv", path], VENV_TIMEOUT_S, "creating the peer venv")
    log(f"peer env: installing {' '.join(requirements)} (this can take minutes)")
    installed = requirements
    try:
        _run(peer_install_command(venv_python, requirements), timeout, "installing the peer")
    except RuntimeError as exc:
        fallback = fallback_requirements(requirements)
        if fallback == requirements or not any(s in str(exc) for s in _FALLBACK_SIGNS):
            raise
        log(f"peer env: no {TORCH_REQUIREMENT} build found; trying "
            f"{TORCH_FALLBACK_REQUIREMENT}")
        _run(peer_install_command(venv_python, fallback), timeout, "installing the peer")
        installed = fallback
    output = _run([venv_python, "-c", check_code], CHECK_TIMEOUT_S,
                  "checking the peer install")
    try:
        versions = json.loads(output.strip().splitlines()[-1])
    except (ValueError, IndexError):
        versions = {}
    write_marker(path, requirements, installed, versions)
    log(f"peer env: ready in {time.perf_counter() - start:.0f} s ({versions})")
    return venv_python


# --- the worker ------------------------------------------------------------------------------

def peer_size_args(size: dict) -> dict:
    """``size`` (our or BertConfig spellings) as the worker's size flags; ValueError if a size
    is missing, repeated or unknown."""
    out = {}
    for key, value in size.items():
        canonical = SIZE_ALIASES.get(key)
        if canonical is None:
            raise ValueError(f"unknown peer size {key!r}; known: {sorted(SIZE_ALIASES)}")
        if canonical in out and out[canonical] != int(value):
            raise ValueError(f"peer size {canonical!r} given twice with different values")
        out[canonical] = int(value)
    missing = [k for k in SIZE_KEYS if k not in out]
    if missing:
        raise ValueError(f"peer size is missing {missing}")
    return out


def peer_worker_command(venv_python: str, size: dict, seq: int, batch: int, threads: int,
                        seed: int = 0, script: str | None = None) -> list[str]:
    """The command line that starts the worker (``-I``: nothing from this repository or from
    PYTHON* variables reaches the peer's interpreter)."""
    args = peer_size_args(size)
    cmd = [venv_python, "-I", "-u", script or WORKER_SCRIPT]
    for key in SIZE_KEYS:
        cmd += [f"--{key}", str(args[key])]
    cmd += ["--seq", str(int(seq)), "--batch", str(int(batch)), "--threads", str(int(threads)),
            "--seed", str(int(seed))]
    return cmd


class PeerWorker:
    """A running ``torch_peer.py`` worker: ``window(steps)`` times ``steps`` training steps.

    Starts the worker with ``venv_python`` (stdin/stdout pipes, stderr to a temporary file)
    and waits up to ``timeout`` seconds for its ready line (model built, 3 warm-up steps), kept
    in ``info`` (alias ``ready``). ``script`` replaces ``torch_peer.py`` (tests use a fake
    worker). An error line, an early exit or a timeout raises RuntimeError with the worker's
    message and the tail of its stderr, and stops the worker. Use it as a context manager or
    call ``close()``. The worker gets OMP_NUM_THREADS/MKL_NUM_THREADS = ``threads`` on top of
    ``env`` (default: this process's environment).
    """

    def __init__(self, venv_python: str, size: dict, seq: int, batch: int, threads: int,
                 timeout: float = 900.0, *, seed: int = 0, script: str | None = None,
                 env: dict | None = None):
        self.timeout = timeout
        self.batch = int(batch)
        self.command = peer_worker_command(venv_python, size, seq, batch, threads, seed, script)
        self.info: dict = {}
        self._proc = None
        self._reader = None
        self._lines: queue.Queue = queue.Queue()
        self._stderr = tempfile.TemporaryFile(mode="w+b")
        worker_env = dict(os.environ if env is None else env)
        worker_env.update({"OMP_NUM_THREADS": str(int(threads)),
                           "MKL_NUM_THREADS": str(int(threads)),
                           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                           "TRANSFORMERS_VERBOSITY": "error", "PYTHONUNBUFFERED": "1"})
        try:
            self._proc = subprocess.Popen(
                self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=self._stderr, text=True, bufsize=1, env=worker_env)
        except OSError as exc:
            self._stderr.close()
            raise RuntimeError(f"could not start the peer worker: {shlex.join(self.command)}: "
                               f"{exc}") from None
        self._reader = threading.Thread(target=self._read_stdout, args=(self._proc.stdout,),
                                        daemon=True, name="peer-worker-stdout")
        self._reader.start()
        try:
            message = self._receive(timeout, "starting")
            if not message.get("ready"):
                raise self._failure(f"expected the ready line, got {message}")
        except BaseException:
            self.close(timeout=1.0)  # a failed or hung worker is not waited for
            raise
        self.info = message

    @property
    def ready(self) -> dict:
        """The worker's ready line (same as ``info``)."""
        return self.info

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _read_stdout(self, stdout):
        try:
            for line in stdout:
                self._lines.put(line)
        except (OSError, ValueError):
            pass
        self._lines.put(None)  # end of output

    def stderr_tail(self, lines: int = OUTPUT_TAIL_LINES) -> str:
        try:
            self._stderr.flush()
            self._stderr.seek(0)
            return _tail(self._stderr.read(), lines)
        except (OSError, ValueError):
            return ""

    def _failure(self, what: str) -> RuntimeError:
        tail = self.stderr_tail()
        return RuntimeError(f"peer worker: {what} [{shlex.join(self.command)}]"
                            + (f"\n--- worker stderr (tail) ---\n{tail}" if tail else ""))

    def _receive(self, timeout: float, doing: str) -> dict:
        deadline = time.monotonic() + timeout
        stray = []
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(left, 0.0))
            except queue.Empty:
                raise self._failure(f"timed out after {timeout:.0f} s while {doing}") from None
            if line is None:
                code = self._wait_quietly()
                raise self._failure(f"exited (code {code}) while {doing}"
                                    + (f"; its output: {''.join(stray)[-2000:]}"
                                       if stray else ""))
            try:
                message = json.loads(line)
            except ValueError:
                message = None
            if not isinstance(message, dict):
                stray.append(line)  # not a protocol line: keep it for the error message
                continue
            if "error" in message:
                self._wait_quietly()  # let it finish writing its traceback to stderr
                raise self._failure(f"error while {doing}: {message['error']}")
            return message

    def _wait_quietly(self, timeout: float = 30.0):
        try:
            return self._proc.wait(timeout=timeout) if self._proc else None
        except subprocess.TimeoutExpired:
            return None

    def _send(self, line: str):
        if self._proc is None or self._proc.poll() is not None:
            raise self._failure("the worker is not running")
        try:
            self._proc.stdin.write(line + "\n")
            self._proc.stdin.flush()
        except (OSError, ValueError) as exc:
            raise self._failure(f"could not send {line!r}: {exc}") from None

    def window(self, steps: int, timeout: float | None = None) -> dict:
        """Run ``steps`` timed training steps in the worker; returns its answer
        ``{"steps", "seconds", "examples_per_s", ...}``."""
        steps = int(steps)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        try:
            self._send(f"window {steps}")
            message = self._receive(self.timeout if timeout is None else timeout,
                                    f"running a window of {steps} steps")
            if message.get("steps") != steps or "seconds" not in message:
                raise self._failure(f"unexpected answer to 'window {steps}': {message}")
        except BaseException:
            self.close(timeout=1.0)  # a failed or hung worker is not waited for
            raise
        return message

    def close(self, timeout: float = 10.0):
        """Ask the worker to quit (kill it if it does not within ``timeout``); idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                if proc.poll() is None:
                    try:
                        proc.stdin.write("quit\n")
                        proc.stdin.flush()
                    except (OSError, ValueError):
                        pass
                try:
                    proc.stdin.close()
                except (OSError, ValueError):
                    pass
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            finally:
                if self._reader is not None:
                    self._reader.join(timeout=5)
                try:
                    proc.stdout.close()
                except (OSError, ValueError):
                    pass
        try:
            self._stderr.close()
        except (OSError, ValueError):
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        try:
            self.close(timeout=1.0)
        except Exception:  # noqa: BLE001 -- interpreter shutdown
            pass
