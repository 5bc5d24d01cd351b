"""Evaluation: models loaded for inference, problems decoded and scored, the
prefixes and sweeps they are asked with, the table, tests and plots, and the
APR-against-SoS+ comparison."""
