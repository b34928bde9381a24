#!/usr/bin/env python3
"""Separate learning rates for the encoder (hidden_*) and the decoder (output), via
`optimizer=`: `optax.multi_transform` over `ar.encoder_decoder_labels`.

  python scripts/research/encoder_decoder_lr.py --encoder-lr 0.004 --decoder-lr 0.001

The book's coupled weight decay (wd * w added to the gradient before Adam) is chained in
front, so only the learning rate differs between the two parts.
"""

import sys
from pathlib import Path

import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout
import autorec_jax as ar  # noqa: E402
from autorec_jax.run.cli import parse_run_args  # noqa: E402


def encoder_decoder_adam(encoder_lr: float | None, decoder_lr: float | None):
    """An `optimizer=` function of the OptimConfig (None: the config's lr)."""
    def optimizer(optim: ar.OptimConfig) -> optax.GradientTransformation:
        def adam(lr):
            return optax.adam(optim.lr if lr is None else lr, b1=optim.b1, b2=optim.b2,
                              eps=optim.eps)
        return optax.chain(
            optax.add_decayed_weights(optim.weight_decay),    # coupled, as in the book
            optax.multi_transform({"encoder": adam(encoder_lr), "decoder": adam(decoder_lr)},
                                  ar.encoder_decoder_labels))
    return optimizer


def run(config: ar.Config, ratings=None, *, encoder_lr: float | None = None,
        decoder_lr: float | None = None, out_dir=None) -> ar.TrainResult:
    return ar.train_and_evaluate(config, out_dir, ratings=ratings,
                                 optimizer=encoder_decoder_adam(encoder_lr, decoder_lr))


def main(argv=None) -> int:
    config, args = parse_run_args(__doc__, argv, extra={
        "--encoder-lr": dict(type=float, default=None, help="hidden_* lr (None: --lr)"),
        "--decoder-lr": dict(type=float, default=None, help="output lr (None: --lr)")})
    result = run(config, encoder_lr=args.encoder_lr, decoder_lr=args.decoder_lr,
                 out_dir=args.out)
    print(f"test RMSE {result.summary['test_rmse']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
