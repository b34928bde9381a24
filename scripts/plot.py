#!/usr/bin/env python3
"""Learning curves of one or more runs (train loss; validation and test RMSE) as a PNG.

  python scripts/plot.py runs/d2l                       # writes runs/d2l/curves.png
  python scripts/plot.py runs/s0 runs/s1 --out seeds.png

Each RUN is a folder holding metrics.jsonl (as written by scripts/train.py --out). A missing
or malformed file exits with status 1 and one line on stderr.
"""

from __future__ import annotations

import os
import signal

if __name__ == "__main__":  # first: Ctrl-C during the imports below exits in one line
    signal.signal(signal.SIGINT, lambda *_: (os.write(2, b"plot.py: interrupted\n"),
                                             os._exit(130)))

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from autorec_jax.run.runtime import Interrupts  # noqa: E402 (stdlib only)

INTERRUPTS = Interrupts("plot.py")
if __name__ == "__main__":
    INTERRUPTS.install()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders")
    parser.add_argument("--out", default=None,
                        help="PNG to write (default: RUN/curves.png for one run, else "
                             "curves.png)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    from autorec_jax.errors import AutoRecError
    from autorec_jax.studies.plots import metrics_path, plot_runs

    out = args.out or (str(metrics_path(args.runs[0]).parent / "curves.png")
                       if len(args.runs) == 1 else "curves.png")

    try:
        plot_runs(args.runs, out)
    except (AutoRecError, OSError) as err:
        print(f"{parser.prog}: error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
