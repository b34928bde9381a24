#!/usr/bin/env python3
"""Your own training loop: `ar.setup` for the data, your batches, `ar.make_train_step`.

  python scripts/research/own_loop.py --parallel pmap --epochs 5

The loop builds dense batches itself from the training rows (any sampling you like), steps
with the library's compiled step (which splits rows over devices itself under pmap) and
scores with `ar.evaluate`. The last batch is padded with row_mask False rows (no-ops), so
every step has one shape and compiles once.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout
import autorec_jax as ar  # noqa: E402
from autorec_jax.run.cli import parse_run_args  # noqa: E402
from autorec_jax.data import row_matrix, to_dense  # noqa: E402


def run(config: ar.Config, ratings=None):
    """Returns (the final TrainState, {"test": {"rmse", "mae", "count"}, ...})."""
    experiment, state = ar.setup(config, ratings)          # state: placed for the mode
    rows_RxN = to_dense(row_matrix(experiment.train, config.data.orientation))
    step_fn = ar.make_train_step(config, parallel=experiment.parallel)
    shuffle, size = np.random.default_rng(config.seed), config.train.batch_size
    for epoch in range(1, config.train.epochs + 1):
        order = shuffle.permutation(len(rows_RxN))
        for start in range(0, len(order), size):
            real = rows_RxN[order[start:start + size]]
            batch = {"ratings": np.pad(real, ((0, size - len(real)), (0, 0))),
                     "row_mask": np.arange(size) < len(real)}
            state, metrics = step_fn(state, batch, experiment.step_rng)   # donates state
        print(f"epoch {epoch}  last step: {int(metrics['rows'])} rows, "
              f"loss {float(metrics['loss']):.4f}")
    return state, ar.evaluate(experiment, state.params)


def main(argv=None) -> int:
    config, _ = parse_run_args(__doc__, argv)
    _, scores = run(config)
    print(f"test RMSE {scores['test']['rmse']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
