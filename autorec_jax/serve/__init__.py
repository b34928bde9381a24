"""Serving a saved run: load it, predict pairs, recommend top-k."""
