"""The names of the model's and the trainer's options, without PyTorch.

The command line offers them as choices; keeping them here lets commands
that never touch the model (``xpsvae ingest``) start without importing it.
"""

ACTIVATION_NAMES = ("gelu", "relu", "silu", "tanh")
NORMS = ("none", "batch", "layer")
SCATTER_MAPS = ("softplus", "exp", "sigmoid")
LOSS_FORMS = ("paper", "elbo")
