"""Responsible recommendation: explanations of finished runs and the fairness audit."""
