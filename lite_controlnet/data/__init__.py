"""Data: paired datasets, the synthetic Fill50k, its colours and the held-out pairs."""
