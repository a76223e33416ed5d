"""ConvScope's engine: models, methods and their machinery. Pure Python + PyTorch, no Qt."""

__version__ = "0.1.0"
