"""The compute engine, imported as ``neuron_explorer.engine`` (it needs torch; nothing outside it does).

Four stages, each a subpackage, each importing only the ones before it:

- ``model``: the architecture registry, loading, hooks, generation, weights;
- ``alignment``: the probe, preference pairs, DPO, toxicity scorers, corpora, prompt sets, evaluation;
- ``neurons``: recording, statistics, clustering and ``compute``, which writes the cache;
- ``patching``: interventions, neuron sets and patch runs.

``build`` runs the stages of all four in order; ``defaults`` holds the numbers they share.
"""
