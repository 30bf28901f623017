"""Alignment, ``neuron_explorer.engine.alignment``: probe, preference pairs, DPO, scorers, prompts, evaluation.

Imports the model layer only.
"""
