"""Benchmarks: `disrouter bench perf` measures what the mesh adds on top of NATS and the models."""
