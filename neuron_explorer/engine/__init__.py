"""The compute engine, imported as ``neuron_explorer.engine`` (it needs torch; nothing outside it does).

Six stages, each a subpackage, each importing only the ones before it (tests/test_layout.py checks):

- ``model``: the architecture registry, loading, hooks, generation, weights, planning, data-parallel ranks;
- ``measure``: what the later stages measure with: prompt sets, corpora, scorers, the probe, the evaluation;
- ``alignment``: what makes the tuned model: the probe's training, preference pairs, DPO;
- ``neurons``: recording, statistics, clustering and ``compute``, which writes the cache (reads the pair, so it
  needs ``model`` and ``measure``, never ``alignment``);
- ``patching``: interventions, neuron sets and patch runs (beside ``neurons``, not importing it);
- ``lab``: one prompt through base, DPO and a patched base, for the explorer's Lab screen.

``build`` runs them in order; ``defaults`` holds the numbers they share.
"""
