"""Served examples per second of a teacher and its distilled student, timed alternately.

    python -m benchmarks.serving_cost --teacher_dir runs/demo --student_dir runs/demo_student

``distill`` times both models once, at the end of its run, which on a shared machine can
fall on a busy moment. This re-times them in one quiet process: the same batch of
``--batch_size`` rows of the teacher's test split (each model through its own featurizer,
as in ``distill_report.json``), ``--rounds`` rounds that alternate teacher and student so
both see the same machine state, each round the median of 20 forward passes
(``trainer.training.distill_lib.examples_per_second``). Prints and writes
``STUDENT_DIR/serving_cost.json`` (per-round figures, medians and the speed-up).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

from trainer import runs
from trainer.training import distill_lib
from trainer.io import write_json


def measure(teacher_dir: str, student_dir: str, batch_size: int = 256,
            rounds: int = 5) -> dict:
    """Per-round examples/s of both models and the median speed-up."""
    opened = {"teacher": runs.open_run(teacher_dir), "student": runs.open_run(student_dir)}
    prepared = opened["teacher"].prepared()
    table = prepared.tables["test" if len(prepared.tables["test"]) else "validation"]
    models = {name: run.model for name, run in opened.items()}
    batches = {name: distill_lib.example_batch(table, run.featurizer, batch_size)
               for name, run in opened.items()}
    per_round = {"teacher": [], "student": []}
    for _ in range(rounds):
        for name in ("teacher", "student"):
            per_round[name].append(distill_lib.examples_per_second(models[name],
                                                                   batches[name]))
    medians = {name: statistics.median(values) for name, values in per_round.items()}
    return {"teacher_dir": teacher_dir, "student_dir": student_dir, "batch_size": batch_size,
            "rounds": rounds, "examples_per_second": per_round, "median": medians,
            "speedup": medians["student"] / medians["teacher"],
            "load_average": os.getloadavg()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher_dir", required=True)
    parser.add_argument("--student_dir", required=True)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    result = measure(args.teacher_dir, args.student_dir, args.batch_size, args.rounds)
    write_json(os.path.join(args.student_dir, "serving_cost.json"), result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
