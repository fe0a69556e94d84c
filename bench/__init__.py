"""Benchmarks of the compression engine on the real CIFAR-10 data in ../shared/data (not run in CI)."""
