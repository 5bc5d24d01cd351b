import jax.numpy as jnp
import numpy as np

from apr_jax.training.loss import masked_lm_loss, next_token_targets


def test_targets_shift_and_respect_masks_and_segments():
    tokens = jnp.array([[2, 5, 6, 2, 7, 8, 0, 0]])
    loss_mask = jnp.array([[0, 0, 1, 0, 1, 1, 0, 0]])
    segments = jnp.array([[1, 1, 1, 2, 2, 2, 0, 0]])
    targets, weights = next_token_targets(tokens, loss_mask, segments)
    np.testing.assert_array_equal(targets[0, :6], [5, 6, 2, 7, 8, 0])
    # position 1 predicts 6 (written); position 3 (BOS of segment 2) predicts 7;
    # position 4 predicts 8; nothing predicts across the segment boundary or padding.
    np.testing.assert_array_equal(weights[0], [0, 1, 0, 1, 1, 0, 0, 0])


def test_loss_matches_hand_computation():
    vocab = 4
    logits = jnp.log(jnp.array([[[0.1, 0.2, 0.3, 0.4]] * 3]))
    batch = {
        "tokens": jnp.array([[0, 3, 1]]),
        "loss_mask": jnp.array([[0, 1, 1]]),
        "segment_ids": jnp.array([[1, 1, 1]]),
    }
    loss_sum, count, correct = masked_lm_loss(logits, batch)
    assert float(count) == 2
    np.testing.assert_allclose(float(loss_sum), -np.log(0.4) - np.log(0.2), rtol=1e-6)
    assert float(correct) == 1  # argmax is token 3: right for the first target only
    assert vocab == logits.shape[-1]
