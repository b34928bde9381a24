"""Devices: compiling one per-device function for jit, pmap or a mesh; data layouts."""
