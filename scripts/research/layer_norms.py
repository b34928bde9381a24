#!/usr/bin/env python3
"""Per-layer gradient norms per epoch, read from the run's history (logged by the library).

  python scripts/research/layer_norms.py --hidden 500,250,500 --out runs/deep

Every metrics.jsonl record (and `result.history` entry) holds grad_norm/<layer>,
update_norm/<layer> and param_norm/<layer> of the epoch's last step; nothing to add.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout
import autorec_jax as ar  # noqa: E402
from autorec_jax.run.cli import parse_run_args  # noqa: E402


def run(config: ar.Config, ratings=None, *, out_dir=None):
    """Returns (TrainResult, layer names, [[epoch, norm per layer...] per epoch])."""
    result = ar.train_and_evaluate(config, out_dir, ratings=ratings)
    layers = [key.split("/", 1)[1] for key in result.history[0]
              if key.startswith("grad_norm/")]
    table = [[record["epoch"]] + [record[f"grad_norm/{name}"] for name in layers]
             for record in result.history]
    print("grad norm per layer (last step of each epoch)")
    print("epoch " + "".join(f"{name:>12}" for name in layers))
    for epoch, *norms in table:
        print(f"{epoch:5d} " + "".join(f"{norm:12.4e}" for norm in norms))
    return result, layers, table


def main(argv=None) -> int:
    config, args = parse_run_args(__doc__, argv)
    result = run(config, out_dir=args.out)[0]
    print(f"test RMSE {result.summary['test_rmse']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
