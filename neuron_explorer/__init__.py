"""neuron-explorer: how DPO preference tuning changes a language model, neuron by neuron."""

__version__ = "0.1.0"
