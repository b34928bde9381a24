#!/usr/bin/env python3
"""Global-norm gradient clipping plus Gaussian gradient noise, through `grad_transform=`.

  python scripts/research/clip_and_noise.py --clip-norm 0.05 --noise-std 1e-4

The seam receives the gradients already summed over devices and a key that is the same on
every device, so the noise (and the result) is the same under --parallel jit and pmap.
"""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout
import autorec_jax as ar  # noqa: E402
from autorec_jax.run.cli import parse_run_args  # noqa: E402


def clip_and_noise(clip_norm: float, noise_std: float):
    """A grad_transform: scale the gradients to global norm <= clip_norm, add N(0, std^2)."""
    def grad_transform(grads, *, params, rng):
        del params
        scale = jnp.minimum(1.0, clip_norm / (optax.tree.norm(grads) + 1e-12))
        noise = optax.tree.random_like(rng, grads)   # rng: per step, same on every device
        return jax.tree.map(lambda g, z: scale * g + noise_std * z, grads, noise)
    return grad_transform


def run(config: ar.Config, ratings=None, *, clip_norm: float = 1.0, noise_std: float = 0.0,
        out_dir=None) -> ar.TrainResult:
    return ar.train_and_evaluate(config, out_dir, ratings=ratings,
                                 grad_transform=clip_and_noise(clip_norm, noise_std))


def main(argv=None) -> int:
    config, args = parse_run_args(__doc__, argv, extra={
        "--clip-norm": dict(type=float, default=1.0, help="bound on the global grad norm"),
        "--noise-std": dict(type=float, default=0.0, help="std of the gradient noise")})
    result = run(config, clip_norm=args.clip_norm, noise_std=args.noise_std, out_dir=args.out)
    print(f"test RMSE {result.summary['test_rmse']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
