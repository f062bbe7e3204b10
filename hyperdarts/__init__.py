"""hyperdarts: differentiable architecture search with complexity control."""

__version__ = "0.1.0"
