"""Widgets of the explorer: the virtual neuron table, bars and terminal plots."""
