"""benchmarks.peer_env and benchmarks/torch_peer.py, offline: nothing is installed and torch is
not needed (the worker protocol is driven through a fake worker script)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.harness import top_level_imports

from benchmarks import peer_env
from benchmarks.peer_env import (PEER_REQUIREMENTS, PeerWorker, ensure_peer_env,
                                 peer_install_command)

SIZE = {"num_layers": 2, "hidden": 64, "heads": 2, "intermediate": 256, "vocab": 30522}


# --- pins and commands -----------------------------------------------------------------------

def test_requirements_are_exact_pins():
    names = {}
    for req in PEER_REQUIREMENTS:
        name, sep, version = req.partition("==")
        assert sep and version and not any(c in version for c in "<>=~!*,"), req
        names[name] = version
    assert names["torch"] == "2.13.0+cpu"
    assert names["transformers"].split(".")[0] == "5"
    assert peer_env.fallback_requirements(PEER_REQUIREMENTS)[0] == "torch==2.13.0"
    assert peer_env.fallback_requirements(PEER_REQUIREMENTS)[1:] == PEER_REQUIREMENTS[1:]


def test_peer_install_command():
    cmd = peer_install_command("/venv/bin/python")
    assert cmd[:4] == ["/venv/bin/python", "-m", "pip", "install"]
    assert "--quiet" in cmd
    assert cmd[-len(PEER_REQUIREMENTS):] == PEER_REQUIREMENTS
    assert peer_install_command("py", ["a==1"])[-1] == "a==1"


def test_peer_worker_command_accepts_our_and_bert_spellings():
    ours = {"num_layers": 2, "hidden_dim": 64, "num_heads": 2, "intermediate_dim": 256,
            "vocabulary_size": 30522}
    cmd = peer_env.peer_worker_command("py", ours, seq=128, batch=16, threads=2)
    assert cmd[:3] == ["py", "-I", "-u"] and cmd[3].endswith("torch_peer.py")
    flags = dict(zip(cmd[4::2], cmd[5::2]))
    assert flags == {"--num_layers": "2", "--hidden": "64", "--heads": "2",
                     "--intermediate": "256", "--vocab": "30522", "--seq": "128",
                     "--batch": "16", "--threads": "2", "--seed": "0"}
    bert = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2,
            "intermediate_size": 256, "vocab_size": 30522}
    assert peer_env.peer_worker_command("py", bert, 128, 16, 2) == cmd
    with pytest.raises(ValueError, match="missing"):
        peer_env.peer_size_args({"num_layers": 2})
    with pytest.raises(ValueError, match="unknown"):
        peer_env.peer_size_args({**SIZE, "dropout": 0.1})


# --- ensure_peer_env -------------------------------------------------------------------------

def _fake_venv(tmp_path, requirements=None):
    path = tmp_path / "venv"
    python = peer_env.venv_python_path(str(path))
    os.makedirs(os.path.dirname(python))
    open(python, "w").close()
    if requirements is not None:
        peer_env.write_marker(str(path), requirements)
    return str(path), python


def _no_subprocess(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError(f"subprocess.run called: {args}")
    monkeypatch.setattr(subprocess, "run", fail)


class FakeRun:
    """Stands in for subprocess.run: records the commands, answers from ``replies`` (a list of
    (returncode, output) for the pip installs; venv and the import check always succeed)."""

    def __init__(self, replies=None):
        self.calls = []
        self.replies = list(replies or [])

    def __call__(self, cmd, **kwargs):
        assert kwargs.get("timeout"), "every step needs a timeout"
        self.calls.append(list(cmd))
        if cmd[1:3] == ["-m", "venv"]:
            python = peer_env.venv_python_path(cmd[3])
            os.makedirs(os.path.dirname(python), exist_ok=True)
            open(python, "w").close()
            return subprocess.CompletedProcess(cmd, 0, "")
        if cmd[1] == "-c":
            return subprocess.CompletedProcess(
                cmd, 0, '{"torch": "2.13.0+cpu", "transformers": "5.x"}\n')
        code, output = self.replies.pop(0) if self.replies else (0, "")
        return subprocess.CompletedProcess(cmd, code, output)

    def installs(self):
        return [c for c in self.calls if c[1:4] == ["-m", "pip", "install"]]


def test_marker_with_same_pins_is_accepted_without_pip(tmp_path, monkeypatch):
    path, python = _fake_venv(tmp_path, PEER_REQUIREMENTS)
    _no_subprocess(monkeypatch)
    logs = []
    assert ensure_peer_env(path, log=logs.append) == python
    assert logs == []


def test_marker_is_plain_json_listing_the_pins(tmp_path):
    path, _ = _fake_venv(tmp_path, PEER_REQUIREMENTS)
    with open(os.path.join(path, peer_env.MARKER_NAME)) as f:
        assert json.load(f)["requirements"] == PEER_REQUIREMENTS


def test_new_env_is_created_installed_and_marked(tmp_path, monkeypatch):
    fake = FakeRun()
    monkeypatch.setattr(subprocess, "run", fake)
    path = str(tmp_path / "venv")
    python = ensure_peer_env(path, python="/base/python", log=lambda m: None)
    assert python == peer_env.venv_python_path(path)
    assert fake.calls[0] == ["/base/python", "-m", "venv", path]
    assert fake.installs() == [peer_install_command(python)]
    marker = peer_env.read_marker(path)
    assert marker["requirements"] == PEER_REQUIREMENTS
    assert marker["versions"]["torch"] == "2.13.0+cpu"
    _no_subprocess(monkeypatch)  # the second call with the same pins does nothing
    assert ensure_peer_env(path, log=lambda m: None) == python


def test_marker_with_other_pins_reinstalls(tmp_path, monkeypatch):
    path, python = _fake_venv(tmp_path, ["torch==2.0.0", "transformers==4.0.0"])
    fake = FakeRun()
    monkeypatch.setattr(subprocess, "run", fake)
    ensure_peer_env(path, log=lambda m: None)
    assert not any(c[1:3] == ["-m", "venv"] for c in fake.calls)  # the venv is reused
    assert fake.installs() == [peer_install_command(python)]
    assert peer_env.read_marker(path)["requirements"] == PEER_REQUIREMENTS


def test_install_failure_names_the_command_and_output_and_leaves_no_marker(tmp_path,
                                                                           monkeypatch):
    path, _ = _fake_venv(tmp_path, ["old==1"])
    monkeypatch.setattr(subprocess, "run", FakeRun([(1, "Collecting x\nERROR: disk full\n")]))
    with pytest.raises(RuntimeError) as info:
        ensure_peer_env(path, log=lambda m: None)
    message = str(info.value)
    assert "pip install" in message and "transformers==" in message
    assert "ERROR: disk full" in message and "exit 1" in message
    assert peer_env.read_marker(path) is None


def test_missing_cpu_build_falls_back_to_plain_torch(tmp_path, monkeypatch):
    path, python = _fake_venv(tmp_path)
    fake = FakeRun([(1, "ERROR: No matching distribution found for torch==2.13.0+cpu"),
                    (0, "")])
    monkeypatch.setattr(subprocess, "run", fake)
    ensure_peer_env(path, log=lambda m: None)
    fallback = peer_env.fallback_requirements(PEER_REQUIREMENTS)
    assert fake.installs() == [peer_install_command(python),
                               peer_install_command(python, fallback)]
    marker = peer_env.read_marker(path)
    assert marker["requirements"] == PEER_REQUIREMENTS and marker["installed"] == fallback
    _no_subprocess(monkeypatch)
    ensure_peer_env(path, log=lambda m: None)


def test_install_timeout_raises(tmp_path, monkeypatch):
    path, _ = _fake_venv(tmp_path)

    def slow(cmd, **kwargs):
        raise subprocess.TimeoutExpired(cmd, kwargs["timeout"], output="Downloading torch...")
    monkeypatch.setattr(subprocess, "run", slow)
    with pytest.raises(RuntimeError, match=r"timed out after 5 s: .*pip install(.|\n)*"
                                           r"Downloading torch"):
        ensure_peer_env(path, log=lambda m: None, timeout=5)


# --- the worker protocol, through a fake worker ----------------------------------------------

FAKE_WORKER = textwrap.dedent("""
    import json, sys, time
    args = sys.argv[1:]
    mode = args[args.index("--mode") + 1] if "--mode" in args else "ok"
    flags = dict(zip(args[0::2], args[1::2]))
    def send(obj):
        print(json.dumps(obj), flush=True)
    if mode == "start_error":
        print("Traceback: something broke", file=sys.stderr, flush=True)
        send({"error": "ModuleNotFoundError: No module named 'torch'"})
        sys.exit(1)
    if mode == "crash":
        print("Segmentation fault (pretend)", file=sys.stderr, flush=True)
        sys.exit(3)
    if mode == "hang":
        time.sleep(60)
    print("some library chatter")
    send({"ready": True, "torch": "fake", "transformers": "fake",
          "threads": int(flags["--threads"]), "params": 123, "argv": args})
    for line in sys.stdin:
        parts = line.split()
        if parts == ["quit"]:
            break
        if parts[0] == "window":
            k = int(parts[1])
            if mode == "window_error":
                send({"error": "RuntimeError: out of memory"})
                sys.exit(1)
            b = int(flags["--batch"])
            send({"steps": k, "seconds": 0.5, "examples_per_s": k * b / 0.5})
""")


@pytest.fixture
def fake_script(tmp_path):
    path = tmp_path / "fake_worker.py"
    path.write_text(FAKE_WORKER)
    return str(path)


def _worker(script, mode=None, **kwargs):
    # The fake worker reads --mode from its argv; PeerWorker passes "--seed N", so the mode is
    # smuggled in through an extra size-free flag by wrapping the script path.
    if mode:
        wrapper = script.replace(".py", f"_{mode}.py")
        with open(wrapper, "w") as f:
            f.write(f"import sys, runpy\nsys.argv += ['--mode', {mode!r}]\n"
                    f"runpy.run_path({script!r}, run_name='__main__')\n")
        script = wrapper
    return PeerWorker(sys.executable, SIZE, seq=128, batch=16, threads=2, script=script,
                      **kwargs)


def test_worker_protocol(fake_script):
    with _worker(fake_script, timeout=60) as peer:
        assert peer.info["ready"] is True and peer.info["threads"] == 2
        assert peer.ready is peer.info
        assert peer.info["argv"][:2] == ["--num_layers", "2"]
        assert "--batch" in peer.info["argv"]
        first = peer.window(5)
        assert first == {"steps": 5, "seconds": 0.5, "examples_per_s": 160.0}
        assert peer.window(2)["steps"] == 2
        pid = peer.pid
        assert pid is not None
    assert peer.pid is None
    peer.close()  # idempotent


def test_worker_quits_on_close(fake_script):
    peer = _worker(fake_script, timeout=60)
    proc = peer._proc
    peer.close()
    assert proc.returncode == 0


def test_worker_error_at_start(fake_script):
    with pytest.raises(RuntimeError, match="No module named 'torch'") as info:
        _worker(fake_script, mode="start_error", timeout=60)
    assert "something broke" in str(info.value)  # the stderr tail


def test_worker_crash_at_start_reports_stderr(fake_script):
    with pytest.raises(RuntimeError, match=r"exited \(code 3\)(.|\n)*Segmentation fault"):
        _worker(fake_script, mode="crash", timeout=60)


def test_worker_error_in_window(fake_script):
    with _worker(fake_script, mode="window_error", timeout=60) as peer:
        with pytest.raises(RuntimeError, match="out of memory"):
            peer.window(3)
        assert peer.pid is None  # stopped after the failure


def test_worker_start_timeout(fake_script):
    with pytest.raises(RuntimeError, match="timed out after 1 s"):
        _worker(fake_script, mode="hang", timeout=1)


def test_worker_rejects_bad_steps(fake_script):
    with _worker(fake_script, timeout=60) as peer:
        with pytest.raises(ValueError):
            peer.window(0)


# --- torch_peer.py itself (without torch) ----------------------------------------------------

TORCH_PEER = os.path.join(os.path.dirname(peer_env.__file__), "torch_peer.py")


def test_torch_peer_imports_only_torch_transformers_and_stdlib():
    # peer_protocol: the standard-library protocol module beside it, imported by path.
    extra = top_level_imports(TORCH_PEER) - set(sys.stdlib_module_names) - {
        "torch", "transformers", "peer_protocol"}
    assert not extra, extra
    protocol = os.path.join(os.path.dirname(TORCH_PEER), "peer_protocol.py")
    assert top_level_imports(protocol) <= set(sys.stdlib_module_names)


def _run_torch_peer(args, stdin=""):
    return subprocess.run([sys.executable, "-I", TORCH_PEER, *args], input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_torch_peer_reports_usage_errors_on_the_protocol():
    result = _run_torch_peer(["--num_layers", "2"])
    assert result.returncode == 1
    (line,) = result.stdout.splitlines()
    assert "required" in json.loads(line)["error"]
    result = _run_torch_peer(["--num_layers", "1", "--hidden", "10", "--heads", "3",
                              "--intermediate", "8", "--vocab", "9", "--seq", "4",
                              "--batch", "2", "--threads", "1"])
    assert result.returncode == 1 and "divisible" in json.loads(result.stdout)["error"]


def test_torch_peer_without_torch_reports_the_import_error():
    import importlib.util
    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is importable here; this checks the error path without it")
    result = _run_torch_peer(["--num_layers", "1", "--hidden", "8", "--heads", "2",
                              "--intermediate", "8", "--vocab", "9", "--seq", "4",
                              "--batch", "2", "--threads", "1"])
    assert result.returncode == 1
    assert json.loads(result.stdout) == {"error": "ModuleNotFoundError: No module named 'torch'"}
