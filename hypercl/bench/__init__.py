"""Benchmarks: HyperCL against Avalanche's baselines, with results written to disk."""
