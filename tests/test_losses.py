"""The masked loss: hand-computed values; unobserved entries never touch loss or gradients."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autorec_jax.losses import loss_denominator, masked_sse, observed_mask
from autorec_jax.model import AutoRec, init_params


class MaskedSSETest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_hand_computed_values(self):
        pred = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
        target = jnp.array([[2.0, 0.0, 1.0], [0.0, 5.5, 0.0]])
        sse, count = self.variant(lambda p, t: masked_sse(p, t, observed_mask(t)))(pred, target)
        # observed: (1-2)^2 + (3-1)^2 + (5-5.5)^2 = 1 + 4 + 0.25
        assert float(sse) == pytest.approx(5.25) and float(count) == 3.0


def test_denominators():
    kw = dict(num_rows=jnp.float32(4), num_observed=jnp.float32(10), row_width=6)
    assert float(loss_denominator("book", **kw)) == 2 * 4 * 6  # 0.5 * mean over 4 x 6
    assert float(loss_denominator("observed", **kw)) == 10
    assert float(loss_denominator("sum", **kw)) == 1
    with pytest.raises(ValueError):
        loss_denominator("median", **kw)


def _loss_and_grads(targets, mask, inputs):
    model = AutoRec(num_outputs=8, hidden=(4,), dropout=0.0)
    params = init_params(model, jax.random.key(0))

    def loss_fn(p):
        sse, _ = masked_sse(model.apply({"params": p}, inputs, train=True), targets, mask)
        return sse / 7.0

    return jax.value_and_grad(loss_fn)(params)


def test_changing_unobserved_targets_changes_neither_loss_nor_any_gradient():
    rng = np.random.default_rng(0)
    inputs = rng.integers(0, 6, (5, 8)).astype(np.float32)
    mask = inputs != 0
    other_targets = np.where(mask, inputs, rng.normal(size=inputs.shape) * 100).astype(
        np.float32)
    loss_a, grads_a = _loss_and_grads(jnp.asarray(inputs), jnp.asarray(mask), inputs)
    loss_b, grads_b = _loss_and_grads(jnp.asarray(other_targets), jnp.asarray(mask), inputs)
    assert float(loss_a) == float(loss_b)
    chex.assert_trees_all_equal(grads_a, grads_b)
    # And the control: changing an OBSERVED target does change them.
    moved = inputs.copy()
    moved[mask] += 1.0
    loss_c, grads_c = _loss_and_grads(jnp.asarray(moved), jnp.asarray(mask), inputs)
    assert float(loss_c) != float(loss_a)


def test_non_finite_predictions_at_unobserved_entries_do_not_leak():
    pred = jnp.array([[1.0, jnp.nan], [jnp.inf, 2.0]])
    target = jnp.array([[2.0, 0.0], [0.0, 1.0]])
    sse, grad = jax.value_and_grad(
        lambda p: masked_sse(p, target, observed_mask(target))[0])(pred)
    assert float(sse) == 2.0
    np.testing.assert_array_equal(np.asarray(grad), [[-2.0, 0.0], [0.0, 2.0]])


def test_mask_zero_padding_rows_add_nothing():
    target = jnp.array([[2.0, 0.0, 1.0]])
    pred = jnp.array([[1.0, 9.0, 3.0]])
    padded_target = jnp.concatenate([target, jnp.zeros((3, 3))])
    padded_pred = jnp.concatenate([pred, jnp.full((3, 3), 7.0)])
    assert masked_sse(pred, target, observed_mask(target)) == masked_sse(
        padded_pred, padded_target, observed_mask(padded_target))
