"""The Textual app over the HDF5 cache."""
