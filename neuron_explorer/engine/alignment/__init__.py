"""Alignment, ``neuron_explorer.engine.alignment``: what makes the tuned model: the probe's training, preference
pairs, DPO.

Imports the model and measure layers only.
"""
