"""Sweeps: one model and dataset compressed at several targets, one job per point, with a Pareto front."""
