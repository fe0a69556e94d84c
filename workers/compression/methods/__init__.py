"""Pruning methods: each module registers its methods in `registry` when imported.

Importing this package is cheap: `registry.get(name)` imports a method's module on first use.
"""
