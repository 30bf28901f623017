"""The model layer, ``neuron_explorer.engine.model``: the only place that knows how an architecture is laid out."""
