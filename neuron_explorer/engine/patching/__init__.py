"""Activation patching, ``neuron_explorer.engine.patching``: interventions, neuron sets, patch runs.

Imports the model layer and alignment (evaluation); reads the cache through ``neuron_explorer.cache``.
"""
