"""Test setup that must run before JAX does any work: CPU backend, 8 fake devices."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import chex  # noqa: E402

chex.set_n_cpu_devices(8)

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
