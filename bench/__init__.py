"""Benchmarks of the sidecar, each against a baseline measured in the same run."""
