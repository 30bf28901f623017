"""The HDF5 cache, imported as ``neuron_explorer.cache``: schema, atomic writing, polars reading, provenance.

Imports neither the engine nor the explorer, and not torch: every path inside the file or its sidecar lives here.
"""
