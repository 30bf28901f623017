"""Neuron statistics, ``neuron_explorer.engine.neurons``: recording, statistics, clustering, the cache's compute.

Imports the model layer and alignment (the probe and the prompt sets).
"""
