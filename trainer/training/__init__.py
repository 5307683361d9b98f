"""Training: the one training library, strategies, optimisation, resume, guards, DP-SGD, tuning, distillation."""
