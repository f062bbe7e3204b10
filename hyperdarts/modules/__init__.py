"""LightningModules: the hypernetwork search, and retraining of the discrete networks it finds."""

from hyperdarts.modules.retrain import RetrainModule
from hyperdarts.modules.search import HyperDARTSSearch

__all__ = ["HyperDARTSSearch", "RetrainModule"]
