"""Evaluation: offline metrics, run reports, student fidelity."""
