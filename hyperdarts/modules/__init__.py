"""LightningModules: the hypernetwork search (and, later, retraining of discrete networks)."""

from hyperdarts.modules.search import HyperDARTSSearch

__all__ = ["HyperDARTSSearch"]
