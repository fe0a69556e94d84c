"""Secateur's compression engine: load, prune, finetune, export and verify, with no service attached.

Importing this package is cheap and torch-free; the heavy modules are imported where they are used,
so the service can share `config` and `errors` without pulling in torch.
"""
