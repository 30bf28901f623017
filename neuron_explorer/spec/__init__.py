"""Torch-free values that cross a boundary (CLI → engine, explorer → job → engine, engine → HDF5), each validated
once."""
