#!/usr/bin/env python3
"""Per-row (per-example) gradients of one batch with `ar.per_row_grads`, after training.

  python scripts/research/per_row_grad_norms.py --rows 16

Prints the min / median / max of the rows' gradient norms, and checks that the rows'
gradients add up to the batch gradient of `ar.compute_grads` (what a step would apply).
"""

import functools
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout
import autorec_jax as ar  # noqa: E402
from autorec_jax.run.cli import parse_run_args  # noqa: E402
from autorec_jax.data import row_matrix, to_dense  # noqa: E402


def run(config: ar.Config, ratings=None, *, rows: int = 8, out_dir=None):
    """Returns (TrainResult, per-row grads [rows, ...], their norms, max |sum - batch|)."""
    result = ar.train_and_evaluate(config, out_dir, ratings=ratings)
    state, rng = result.state, result.experiment.step_rng
    dense_BxN = to_dense(row_matrix(result.experiment.train, config.data.orientation))[:rows]
    batch = {"ratings": dense_BxN}              # mask and row_mask default to ratings != 0, all
    per_row_fn = jax.jit(functools.partial(ar.per_row_grads, config=config))  # pure: jit it
    per_row = jax.device_get(per_row_fn(state, batch, rng))
    leaves = [g.reshape(len(dense_BxN), -1) for g in jax.tree.leaves(per_row)]
    norms = np.sqrt(sum(np.sum(np.square(g), axis=1) for g in leaves))
    grads_fn = jax.jit(functools.partial(ar.compute_grads, config=config))
    batch_grads, _ = grads_fn(state, batch, ar.step_keys(rng, state.step))
    gap = max(float(np.max(np.abs(g.sum(0) - np.ravel(b))))
              for g, b in zip(leaves, jax.tree.leaves(batch_grads)))
    print(f"per-row grad norms over {len(norms)} rows: min {norms.min():.4g}  "
          f"median {np.median(norms):.4g}  max {norms.max():.4g}")
    print(f"max |sum of per-row grads - batch grad| = {gap:.3g}")
    return result, per_row, norms, gap


def main(argv=None) -> int:
    config, args = parse_run_args(__doc__, argv, extra={
        "--rows": dict(type=int, default=8, help="training rows in the batch examined")})
    result = run(config, rows=args.rows, out_dir=args.out)[0]
    print(f"test RMSE {result.summary['test_rmse']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
