#!/usr/bin/env python3
"""A loss-aware optimiser through `optimizer=`: full-batch L-BFGS with optax's zoom line search.

  python scripts/research/lbfgs.py --batch-size 0 --epochs 30 --out runs/lbfgs

optax.lbfgs's update needs the objective (`update(grads, state, params, value=, grad=,
value_fn=)`): the train step hands it the loss and `objective_fn`, the same globally summed
loss its gradients come from (one psum under pmap or sharded, so every device takes the same
line-search branches). The same is `--optimizer lbfgs` (with coupled weight decay in the
objective); this example injects it to show the seam. Full batch only (`--batch-size 0`):
a line search must compare one function at several points.
"""

import sys
from pathlib import Path

import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout
import autorec_jax as ar  # noqa: E402
from autorec_jax.run.cli import parse_run_args  # noqa: E402


def lbfgs(memory: int = 10) -> optax.GradientTransformationExtraArgs:
    """L-BFGS whose step the line search picks (no learning rate)."""
    return optax.lbfgs(learning_rate=None, memory_size=memory)


def run(config: ar.Config, ratings=None, *, memory: int = 10, out_dir=None) -> ar.TrainResult:
    if config.train.batch_size != 0:
        raise ar.ConfigError("lbfgs.py: L-BFGS needs the full batch (--batch-size 0)")
    return ar.train_and_evaluate(config, out_dir, ratings=ratings, optimizer=lbfgs(memory))


def main(argv=None) -> int:
    config, args = parse_run_args(__doc__, argv, extra={
        "--memory": dict(type=int, default=10, help="curvature pairs kept")})
    result = run(config, memory=args.memory, out_dir=args.out)
    losses = [record["train_loss"] for record in result.history]
    print(f"train loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} epochs")
    print(f"test RMSE {result.summary['test_rmse']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
