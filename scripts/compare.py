#!/usr/bin/env python3
"""Compare two configs over the same splits: paired t test and interval of test RMSE a - b
(or of another results column: --metric test_ndcg@10).

  python scripts/compare.py --splits book:0-4 --out runs/cmp \\
      --a "--preset d2l" --b "--preset d2l --dropout 0.2"      # runs both (resumable)
  python scripts/compare.py --results runs/proto_a runs/proto_b  # two finished protocols

--a and --b each hold train.py flags; config flags given outside them (e.g. --epochs 5)
apply to both sides first. The sides run as `protocol.py` protocols in --out/a and --out/b
(run it again to finish an interrupted comparison). Splits are paired by label; lower test
RMSE (or MAE) is better, higher for a ranking metric (test_ndcg@10, test_recall@20,
test_heldout_ndcg, ...: autorec_jax/ranking.py). Exits 2 on a bad flag, plan or mismatched splits, 1 on a failed run.
"""

from __future__ import annotations

import os
import signal

if __name__ == "__main__":  # first: Ctrl-C during the imports below exits in one line
    signal.signal(signal.SIGINT, lambda *_: (os.write(2, b"compare.py: interrupted\n"),
                                             os._exit(130)))

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from autorec_jax.run.runtime import Interrupts  # noqa: E402 (stdlib only)

INTERRUPTS = Interrupts("compare.py")
if __name__ == "__main__":
    INTERRUPTS.install()

from autorec_jax.run.cli import config_from_flag_string, parse_run_args, run_main  # noqa: E402
from autorec_jax.errors import ConfigError  # noqa: E402

PROG = "compare.py"
EXTRA = {
    "--splits": dict(default=None, help="split plan: book:A-B, book:N, u1-u5, uK or kfold:K"),
    "--a": dict(default=None, metavar="FLAGS", help="train.py flags of config a"),
    "--b": dict(default=None, metavar="FLAGS", help="train.py flags of config b"),
    "--results": dict(nargs=2, default=None, metavar=("A_DIR", "B_DIR"),
                      help="compare two finished protocol folders instead of running"),
    "--metric": dict(default="test_rmse",
                     help="the results column compared (default test_rmse; e.g. "
                          "test_ndcg@10, test_recall@10, test_heldout_ndcg)"),
}


def _tables(args):
    """(table a, table b): read from --results, or run both protocols."""
    from autorec_jax.studies import protocol  # imports JAX's backends lazily

    if args.results is not None:
        if args.a is not None or args.b is not None or args.splits is not None:
            raise ConfigError("--results excludes --splits, --a and --b")
        return tuple(protocol.read_results(path) for path in args.results)
    if args.splits is None or args.a is None or args.b is None or args.out is None:
        raise ConfigError("give --splits, --out, --a and --b (or --results A_DIR B_DIR)")
    configs = {side: config_from_flag_string(getattr(args, side), args, f"--{side}")
               for side in ("a", "b")}
    plans = {side: protocol.split_plan(args.splits, config)
             for side, config in configs.items()}
    tables = []
    for side, config in configs.items():
        result = protocol.run_protocol(config, plans[side], Path(args.out) / side)
        print(f"{side}: {protocol.format_mean_ci(result.test_rmse)}", flush=True)
        tables.append(result.table)
    return tuple(tables)


def main(argv: list[str] | None = None) -> int:
    _, args = parse_run_args(__doc__, argv, extra=EXTRA)
    from autorec_jax.studies import protocol

    def body() -> int:
        table_a, table_b = _tables(args)
        result = protocol.compare(table_a, table_b, metric=args.metric)
        values_b = table_b.set_index("label")[args.metric]
        for label, value in zip(table_a["label"], table_a[args.metric]):
            print(f"{label}: a {value:.4f}  b {values_b[label]:.4f}  "
                  f"a - b {value - values_b[label]:+.4f}")
        print("\n".join(protocol.format_comparison(result)))
        return 0

    INTERRUPTS.folder = args.out
    INTERRUPTS.message = "interrupted; run it again to continue"
    return run_main(PROG, body, interrupted=INTERRUPTS.message, interrupts=INTERRUPTS)


if __name__ == "__main__":
    sys.exit(main())
