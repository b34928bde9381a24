#!/usr/bin/env python3
"""Train one config on repeated splits and report test RMSE with a 95% confidence interval.

  python scripts/protocol.py --splits book:0-4 --out runs/proto_d2l     # the book, 5 seeds
  python scripts/protocol.py --splits u1-u5 --out runs/proto_u          # official splits
  python scripts/protocol.py --splits kfold:5 --out runs/proto_k --dropout 0.2

--splits: book:A-B (the book's random split with seed s = A..B; s seeds the split and the
model), book:N (seeds 0..N-1), u1-u5 or uK (MovieLens 100K's official splits), kfold:K (the
folds of one seeded partition). Every train.py config flag applies to every split. Each
split is a run folder under --out; results.csv, results.json and report.md sit beside them.
Run it again with the same flags to finish an interrupted protocol (finished splits are
skipped); another config in the same --out is refused. Splits whose shapes agree train
together in one compiled step (autorec_jax.run.multi), unless --one-at-a-time. Exits 2 on a
bad flag or plan, 1 on bad data or a failed run.
"""

from __future__ import annotations

import os
import signal

if __name__ == "__main__":  # first: Ctrl-C during the imports below exits in one line
    signal.signal(signal.SIGINT, lambda *_: (os.write(2, b"protocol.py: interrupted\n"),
                                             os._exit(130)))

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from autorec_jax.run.runtime import Interrupts  # noqa: E402 (stdlib only)

INTERRUPTS = Interrupts("protocol.py")
if __name__ == "__main__":
    INTERRUPTS.install()

from autorec_jax.run.cli import parse_run_args, run_main  # noqa: E402

PROG = "protocol.py"
EXTRA = {
    "--splits": dict(default="book:0-4",
                     help="split plan: book:A-B, book:N, u1-u5, uK or kfold:K"),
    "--one-at-a-time": dict(action="store_true",
                            help="train the splits one after another, not those that share "
                                 "shapes together in one compiled step"),
}


def main(argv: list[str] | None = None) -> int:
    config, args = parse_run_args(__doc__, argv, extra=EXTRA)
    from autorec_jax.studies import protocol  # imports JAX's backends lazily

    def body() -> int:
        plan = protocol.split_plan(args.splits, config)
        result = protocol.run_protocol(config, plan, args.out,
                                       batch_members=not args.one_at_a_time)
        for row in result.table.itertuples():
            epoch = "best" if "valid_rmse" in result.table else "last"
            print(f"{row.label}: test RMSE {row.test_rmse:.4f}  MAE {row.test_mae:.4f}  "
                  f"({row.split}, seed {row.seed}, {epoch} epoch {row.best_epoch})")
        print(protocol.format_mean_ci(result.test_rmse))
        return 0

    INTERRUPTS.folder = args.out
    INTERRUPTS.message = "interrupted; run it again with the same flags to continue"
    return run_main(PROG, body, interrupted=INTERRUPTS.message, interrupts=INTERRUPTS)


if __name__ == "__main__":
    sys.exit(main())
