"""The Textual app over the HDF5 cache, imported as ``neuron_explorer.explorer``.

Imports the cache and the engine's torch-free modules (defaults, patch modes, neuron sets), never torch: long
jobs run as subprocesses of the command line.
"""
