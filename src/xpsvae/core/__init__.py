"""The bottom layer: error types, constants, on-disk names and the machine's limits.

Nothing here imports another part of xpsvae, PyTorch or GaiaXPy.
"""
