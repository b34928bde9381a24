#!/usr/bin/env python3
"""Your own Flax module through `model=`: AutoRec with a layer norm between encoder and decoder.

  python scripts/research/own_module.py --hidden 500 --out runs/layer_norm

The module honours the short contract of `autorec_jax/networks.py`: `__call__(ratings_BxN,
*, train, row_ids=None) -> pred_BxN` (and optionally `forward` returning the hidden
activations a loss reads); dropout draws from the "dropout" rng. The run trains, evaluates,
checkpoints and recommends with it; its run folder records the module, and
`load_run(out, model=layer_norm_autorec)` reads it back.
"""

import sys
from pathlib import Path

import flax.linen as nn
import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout
import autorec_jax as ar  # noqa: E402
from autorec_jax.model import ACTIVATIONS, hash_dropout  # noqa: E402
from autorec_jax.run.cli import parse_run_args  # noqa: E402


class LayerNormAutoRec(nn.Module):
    """h(r) = W . LayerNorm(dropout(g(V . r + mu))) + b: params encoder, norm, decoder."""

    num_outputs: int
    hidden: int = 500
    activation: str = "sigmoid"
    dropout: float = 0.05

    @nn.compact
    def forward(self, ratings_BxN: jax.Array, *, train: bool, row_ids=None):
        code_BxH = ACTIVATIONS[self.activation](nn.Dense(self.hidden, name="encoder")(ratings_BxN))
        hidden = (code_BxH,)
        if train and self.dropout > 0:
            code_BxH = hash_dropout(code_BxH, self.dropout, self.make_rng("dropout"), row_ids)
        code_BxH = nn.LayerNorm(name="norm")(code_BxH)
        return nn.Dense(self.num_outputs, name="decoder")(code_BxH), hidden

    def __call__(self, ratings_BxN: jax.Array, *, train: bool, row_ids=None) -> jax.Array:
        return self.forward(ratings_BxN, train=train, row_ids=row_ids)[0]


def layer_norm_autorec(model_config: ar.ModelConfig, num_outputs: int) -> LayerNormAutoRec:
    """The `model=` function: the config's first hidden width, activation and dropout."""
    return LayerNormAutoRec(num_outputs=num_outputs, hidden=model_config.hidden[0],
                            activation=model_config.activation, dropout=model_config.dropout)


def run(config: ar.Config, ratings=None, *, out_dir=None) -> ar.TrainResult:
    return ar.train_and_evaluate(config, out_dir, ratings=ratings, model=layer_norm_autorec)


def main(argv=None) -> int:
    config, args = parse_run_args(__doc__, argv)
    result = run(config, out_dir=args.out)
    print(f"model {result.summary['model']}")
    print(f"test RMSE {result.summary['test_rmse']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
