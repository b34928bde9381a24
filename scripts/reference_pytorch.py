"""Independent PyTorch reference port of the d2l.ai "AutoRec" chapter (MXNet code).

This script is used only to produce comparison figures for ``autorec_jax``; it is not
part of the package and is not imported by it or by its tests. It needs ``torch``, which
is NOT a project dependency (install it separately, e.g. ``pip install torch``).

It follows the book's protocol (item-based AutoRec on MovieLens 100K):

* random 90/10 split: ``np.random.seed(seed)``, then in file row order
  ``np.random.uniform(0, 1, n) < 0.9`` marks the training rows;
* dense (num_items, num_users) float32 interaction matrices, one item per example;
* Linear(num_users, 500) + sigmoid, Dropout(0.05), Linear(500, num_users); weights from
  Normal(0, 0.01), biases zero; in training the output is multiplied by sign(input);
* gluon L2Loss (0.5 * mean squared error per example), averaged over the batch;
* Adam(lr=0.002, betas=(0.9, 0.999), eps=1e-8) with coupled weight decay 1e-5 on all
  parameters;
* 25 epochs, batch size 256, gluon ``DataLoader(shuffle=True, last_batch="rollover")``
  reproduced with NumPy's global random state (continuing after the split's draws);
* test RMSE on the observed test entries from the eval-mode reconstruction of the
  training matrix, computed in float64.

Run:

    python3 scripts/reference_pytorch.py --seeds 0 1 2 3 4 --epochs 25
"""

import os
import signal

if __name__ == "__main__":  # first: Ctrl-C during the imports below exits in one line
    signal.signal(signal.SIGINT, lambda *_: (os.write(2, b"reference_pytorch.py: interrupted\n"),
                                             os._exit(130)))

import argparse
import hashlib
import sys
import time

import numpy as np
import pandas as pd
import torch
from torch import nn

DEFAULT_DATA = os.path.join(os.path.expanduser("~"), ".cache", "autorec_jax", "ml-100k",
                            "u.data")
EXPECTED_SHA256 = "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"

NUM_HIDDEN = 500
DROPOUT = 0.05
LEARNING_RATE = 0.002
WEIGHT_DECAY = 1e-5
BATCH_SIZE = 256
EVAL_BATCH_SIZE = 1024
TEST_RATIO = 0.1


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_data(path):
    """d2l.read_data_ml100k: returns (data frame, num_users, num_items)."""
    actual = sha256_of(path)
    if actual != EXPECTED_SHA256:
        raise SystemExit(f"SHA-256 mismatch for {path}: got {actual}, "
                         f"expected {EXPECTED_SHA256}")
    names = ["user_id", "item_id", "rating", "timestamp"]
    data = pd.read_csv(path, sep="\t", names=names, engine="python")
    num_users = data.user_id.unique().shape[0]
    num_items = data.item_id.unique().shape[0]
    return data, num_users, num_items


def split_data(data, test_ratio=TEST_RATIO):
    """d2l.split_data_ml100k, 'random' mode (uses NumPy's global random state)."""
    mask = np.random.uniform(0, 1, len(data)) < 1 - test_ratio
    return data[mask], data[~mask]


def interaction_matrix(data, num_users, num_items):
    """d2l.load_data_ml100k (explicit feedback): inter[item - 1, user - 1] = rating."""
    inter = np.zeros((num_items, num_users), dtype=np.float32)
    inter[data.item_id.to_numpy() - 1, data.user_id.to_numpy() - 1] = data.rating.to_numpy()
    return inter


class RolloverLoader:
    """gluon DataLoader(shuffle=True, last_batch='rollover') over the rows of an array.

    RandomSampler: ``np.arange(n)`` shuffled in place by ``np.random.shuffle`` (global
    state) at the start of each epoch. BatchSampler 'rollover': only full batches are
    yielded and the remainder is prepended to the next epoch's indices.
    """

    def __init__(self, array, batch_size):
        self.array = array
        self.batch_size = batch_size
        self._prev = []

    def __iter__(self):
        indices = np.arange(len(self.array))
        np.random.shuffle(indices)
        batch, self._prev = self._prev, []
        for i in indices:
            batch.append(i)
            if len(batch) == self.batch_size:
                yield self.array[np.asarray(batch)]
                batch = []
        if batch:
            self._prev = batch


class AutoRec(nn.Module):
    def __init__(self, num_hidden, num_users, dropout=DROPOUT):
        super().__init__()
        self.encoder = nn.Linear(num_users, num_hidden)
        self.decoder = nn.Linear(num_hidden, num_users)
        self.dropout = nn.Dropout(dropout)
        for layer in (self.encoder, self.decoder):
            nn.init.normal_(layer.weight, mean=0.0, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        hidden = self.dropout(torch.sigmoid(self.encoder(x)))
        pred = self.decoder(hidden)
        if self.training:
            return pred * torch.sign(x)
        return pred


def evaluate(net, train_mat, test_mat):
    """Book evaluator: reconstruct the training matrix, RMSE on observed test entries."""
    net.eval()
    recons = []
    with torch.no_grad():
        for start in range(0, len(train_mat), EVAL_BATCH_SIZE):
            batch = torch.from_numpy(train_mat[start:start + EVAL_BATCH_SIZE])
            recons.append(net(batch).numpy())
    net.train()
    recon = np.concatenate(recons).astype(np.float64)
    test = test_mat.astype(np.float64)
    sign = np.sign(test)
    return float(np.sqrt(np.sum(np.square(test - sign * recon)) / np.sum(sign)))


def run_seed(data, num_users, num_items, seed, epochs, verbose):
    np.random.seed(seed)
    torch.manual_seed(seed)
    train_df, test_df = split_data(data)
    train_mat = interaction_matrix(train_df, num_users, num_items)
    test_mat = interaction_matrix(test_df, num_users, num_items)

    net = AutoRec(NUM_HIDDEN, num_users)
    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.999),
                                 eps=1e-8, weight_decay=WEIGHT_DECAY)
    loader = RolloverLoader(train_mat, BATCH_SIZE)

    train_seconds = 0.0
    rmse = float("nan")
    for epoch in range(epochs):
        start = time.perf_counter()
        total_loss, num_batches = 0.0, 0
        for values in loader:
            x = torch.from_numpy(values)
            pred = net(x)
            # gluon L2Loss per example, summed, then trainer.step(batch_size) divides.
            loss = (0.5 * torch.square(pred - x).mean(dim=1)).sum() / x.shape[0]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach())
            num_batches += 1
        train_seconds += time.perf_counter() - start
        rmse = evaluate(net, train_mat, test_mat)
        if verbose:
            print(f"  seed {seed} epoch {epoch + 1:2d}: train loss "
                  f"{total_loss / max(num_batches, 1):.4f}, test RMSE {rmse:.4f}")
    return rmse, train_seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="path to ml-100k u.data")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads value (default: torch's choice)")
    parser.add_argument("--verbose", action="store_true", help="print every epoch")
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    data, num_users, num_items = read_data(args.data)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{num_users} users, {num_items} items, {len(data)} ratings")

    results = []
    seconds = 0.0
    for seed in args.seeds:
        rmse, train_seconds = run_seed(data, num_users, num_items, seed, args.epochs,
                                       args.verbose)
        results.append(rmse)
        seconds += train_seconds
        print(f"seed {seed}: final test RMSE {rmse:.4f} "
              f"({train_seconds / args.epochs:.3f} s/epoch training)")
    print(f"mean test RMSE over {len(results)} seeds: {np.mean(results):.4f}")
    print(f"mean training time: {seconds / (args.epochs * len(results)):.3f} s/epoch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
