"""The HDF5 cache: schema, atomic writing, polars reading, provenance. Imports neither engine nor explorer."""
