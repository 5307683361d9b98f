"""The line protocol of the peer workers (``torch_peer.py``, ``recbole_sasrec_peer.py``):
standard library only, imported by path by scripts that run in another virtual environment
with ``python -I`` (which puts no directory of this repository on ``sys.path``).

One JSON object per line on the worker's original stdout, flushed after each:

* after building and warming up: the peer's ready line (``{"ready": true, ...}``);
* then for each stdin line ``window K``: K timed training steps, answered with
  ``{"steps": K, "seconds": s, "examples_per_s": ..., "loss": ...}``;
* ``quit`` or end of input: exit 0;
* any error: ``{"error": "..."}`` and exit 1.

Anything a library prints goes to stderr: file descriptor 1 is pointed at stderr at start,
and the protocol is written to a duplicate of the original stdout.
"""

import argparse
import json
import os
import sys
import traceback


class ArgumentError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """A worker's argument parser: usage errors go out on the protocol, not as exit 2."""

    def error(self, message):
        raise ArgumentError(message)


def protocol_stream():
    """A text stream on the original stdout; fd 1 (and sys.stdout) then go to stderr."""
    try:
        sys.stdout.flush()
        fd = os.dup(1)
        os.dup2(2, 1)
        stream = os.fdopen(fd, "w", buffering=1)
    except (OSError, ValueError, AttributeError):  # no real fd (e.g. an embedded interpreter)
        stream = sys.stdout
    sys.stdout = sys.stderr
    return stream


def send(stream, obj):
    stream.write(json.dumps(obj) + "\n")
    stream.flush()


def parse_command(line):
    """``("window", K)``, ``("quit", None)`` or ``(None, None)`` for a blank line;
    ValueError otherwise."""
    parts = line.split()
    if not parts:
        return None, None
    if parts[0] == "quit" and len(parts) == 1:
        return "quit", None
    if parts[0] == "window" and len(parts) == 2:
        try:
            steps = int(parts[1])
        except ValueError:
            steps = 0
        if steps >= 1:
            return "window", steps
    raise ValueError(f"unknown command {line.strip()!r} (expected 'window K' with K >= 1 or "
                     "'quit')")


def serve(make_peer, argv):
    """Runs a worker: ``make_peer(argv)`` builds the peer (``.info``, ``.window(steps)``,
    optionally ``.close()``), then requests are answered until ``quit``; returns the exit
    status."""
    out = protocol_stream()
    peer = None
    try:
        peer = make_peer(argv)
        send(out, peer.info)
        for line in sys.stdin:
            command, steps = parse_command(line)
            if command == "quit":
                break
            if command == "window":
                send(out, peer.window(steps))
        return 0
    except SystemExit as exc:
        if exc.code in (0, None):  # --help
            return 0
        return fail(out, exc)
    except BaseException as exc:  # noqa: BLE001 -- every failure is reported on the protocol
        return fail(out, exc)
    finally:
        if peer is not None and hasattr(peer, "close"):
            peer.close()


def fail(out, exc):
    traceback.print_exception(exc, file=sys.stderr)
    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    try:
        send(out, {"error": message})
    except (OSError, ValueError):  # the reader has gone
        pass
    return 1
