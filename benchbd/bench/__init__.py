"""Benchmarks that compare benchbd with a plain reference loop in the same run."""
