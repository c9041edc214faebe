"""Evaluation: the fidelity metrics, one scoring path, the studies and their reports."""
