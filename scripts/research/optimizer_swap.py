#!/usr/bin/env python3
"""Adam replaced by optax's Lion or AdamW from Python, through `optimizer=`.

  python scripts/research/optimizer_swap.py --optimizer-name lion --lr 0.0005

`optimizer=` takes an optax.GradientTransformation, or (as here) a function of the config's
OptimConfig returning one, so --lr, --b1, --b2 and --weight-decay still apply. Both use
decoupled weight decay (scaled by the learning rate), unlike the book's coupled L2.
"""

import sys
from pathlib import Path

import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout
import autorec_jax as ar  # noqa: E402
from autorec_jax.run.cli import parse_run_args  # noqa: E402

OPTIMIZERS = {
    "lion": lambda o: optax.lion(o.lr, b1=o.b1, weight_decay=o.weight_decay),
    "adamw": lambda o: optax.adamw(o.lr, b1=o.b1, b2=o.b2, eps=o.eps,
                                   weight_decay=o.weight_decay),
}


def run(config: ar.Config, ratings=None, *, name: str = "lion",
        out_dir=None) -> ar.TrainResult:
    return ar.train_and_evaluate(config, out_dir, ratings=ratings, optimizer=OPTIMIZERS[name])


def main(argv=None) -> int:
    config, args = parse_run_args(__doc__, argv, extra={
        "--optimizer-name": dict(choices=sorted(OPTIMIZERS), default="lion",
                                 help="the optax optimiser replacing Adam")})
    result = run(config, name=args.optimizer_name, out_dir=args.out)
    print(f"test RMSE {result.summary['test_rmse']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
