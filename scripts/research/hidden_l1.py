#!/usr/bin/env python3
"""An L1 penalty on the hidden activations, through `loss_fn=`; its sum is logged as train/l1.

  python scripts/research/hidden_l1.py --l1 0.01 --out runs/l1   # metrics.jsonl: train/l1

A loss returns this device's sums: the library psums them and divides by the config's
normaliser (`--loss`), so the penalty is normalised like the squared error. Padding rows
(row_mask False) must add nothing: their hidden code is not zero (sigmoid(bias)).
"""

import sys
from pathlib import Path

import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout
import autorec_jax as ar  # noqa: E402
from autorec_jax.run.cli import parse_run_args  # noqa: E402


def hidden_l1_loss(weight: float):
    """A loss_fn: the default masked SSE plus weight * sum |h| over real rows and layers."""
    def loss_fn(outputs: ar.ModelOutputs, batch: dict, *, params, rng) -> ar.LossTerms:
        terms = ar.reconstruction_loss(outputs, batch, params=params, rng=rng)
        real_Bx1 = batch["row_mask"][:, None]
        l1 = sum(jnp.sum(jnp.where(real_Bx1, jnp.abs(h_BxH), 0.0)) for h_BxH in outputs.hidden)
        return ar.LossTerms(sum=terms.sum + weight * l1, count=terms.count,
                            metrics={"l1": l1})
    return loss_fn


def run(config: ar.Config, ratings=None, *, weight: float = 0.01,
        out_dir=None) -> ar.TrainResult:
    return ar.train_and_evaluate(config, out_dir, ratings=ratings, loss_fn=hidden_l1_loss(weight))


def main(argv=None) -> int:
    config, args = parse_run_args(__doc__, argv, extra={
        "--l1": dict(type=float, default=0.01, help="weight of sum |hidden activation|")})
    result = run(config, weight=args.l1, out_dir=args.out)
    print(f"train/l1 (last epoch, mean per step) {result.history[-1]['train/l1']:.4f}")
    print(f"test RMSE {result.summary['test_rmse']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
