"""What every later stage measures with, ``neuron_explorer.engine.measure``: prompt sets and corpora (and the JSONL
reading under both), toxicity scorers, the toxicity probe, and the evaluation (toxicity, perplexity, F1) that the
alignment stage, `compute`, patch runs and the lab all run.

Imports the model layer only.
"""
