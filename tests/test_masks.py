"""Pruning at initialization: SNIP mask gradients, global top-k, random and magnitude masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dps_jax import masks

RNG = np.random.default_rng(0)


def linear_apply(params, images):
    """A softmax-regression 'network': logits = x W + b."""
    flat = images.reshape((images.shape[0], -1))
    return flat @ params['dense']['kernel'] + params['dense']['bias']


def numpy_mask_gradient_sum(kernel, bias, images, labels, batch_size):
    """Sum over batches of g * w for softmax regression, by hand: dCE/dlogits = softmax - onehot."""
    total_kernel, total_bias = np.zeros_like(kernel), np.zeros_like(bias)
    flat = images.reshape((images.shape[0], -1)).astype(np.float64)
    for start in range(0, len(labels), batch_size):
        x, y = flat[start:start + batch_size], labels[start:start + batch_size]
        logits = x @ kernel + bias
        probabilities = np.exp(logits - logits.max(1, keepdims=True))
        probabilities /= probabilities.sum(1, keepdims=True)
        delta = (probabilities - np.eye(kernel.shape[1])[y]) / len(y)
        total_kernel += (x.T @ delta) * kernel
        total_bias += delta.sum(0) * bias
    return total_kernel, total_bias


def linear_problem(num_examples=250, features=6, classes=4, bias_scale=0.3):
    kernel = RNG.normal(size=(features, classes))
    bias = RNG.normal(size=classes) * bias_scale
    images = RNG.normal(size=(num_examples, features, 1, 1))
    labels = RNG.integers(0, classes, size=num_examples)
    params = {'dense': {'kernel': jnp.asarray(kernel, jnp.float32), 'bias': jnp.asarray(bias, jnp.float32)}}
    return params, kernel, bias, images, labels


# Oracle: numpy in float64.
@pytest.mark.matmul_precision('highest')
def test_mask_gradient_is_gradient_times_weight_summed_over_batches_of_the_whole_split():
    # 250 examples in batches of 100: two full batches and a last one of 50, each its own mean.
    params, kernel, bias, images, labels = linear_problem()
    got = masks.mask_gradient_sum(linear_apply, params, jnp.asarray(images, jnp.float32), jnp.asarray(labels), 100)
    want_kernel, want_bias = numpy_mask_gradient_sum(kernel, bias, images, labels, 100)
    np.testing.assert_allclose(got['dense']['kernel'], want_kernel, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got['dense']['bias'], want_bias, rtol=1e-4, atol=1e-6)


# Oracle: numpy in float64; a TF32 score could swap two near-equal ranks.
@pytest.mark.matmul_precision('highest')
def test_snip_mask_keeps_the_largest_summed_mask_gradients():
    params, kernel, bias, images, labels = linear_problem()
    want_kernel, want_bias = numpy_mask_gradient_sum(kernel, bias, images, labels, 100)
    scores = np.abs(np.concatenate([want_bias.ravel(), want_kernel.ravel()]))  # pytree order: bias, kernel
    keep = round(scores.size * 0.4)
    expected = np.zeros(scores.size, bool)
    expected[np.argsort(-scores, kind='stable')[:keep]] = True
    mask = masks.snip_mask(linear_apply, params, jnp.asarray(images, jnp.float32), jnp.asarray(labels), 0.6, 100)
    got = np.concatenate([np.ravel(mask['dense']['bias']), np.ravel(mask['dense']['kernel'])])
    np.testing.assert_array_equal(got, expected)


def test_snip_scores_are_normalized():
    params, _, _, images, labels = linear_problem()
    scores = masks.snip_scores(linear_apply, params, jnp.asarray(images, jnp.float32), jnp.asarray(labels))
    assert sum(float(leaf.sum()) for leaf in jax.tree.leaves(scores)) == pytest.approx(1.0, rel=1e-5)


def test_hand_made_two_layer_ranking():
    # Scores by hand; global ranking across both layers: 9 (l2 kernel), 8, 7 (l1 kernel), 5 (l2 bias).
    scores = {'layer1': {'bias': jnp.array([0.0, 1.0]), 'kernel': jnp.array([[8.0, 2.0], [3.0, 7.0]])},
              'layer2': {'bias': jnp.array([5.0]), 'kernel': jnp.array([[9.0], [4.0]])}}
    mask = masks.top_k_mask(scores, sparsity=1 - 4 / 9)
    np.testing.assert_array_equal(mask['layer1']['kernel'], [[True, False], [False, True]])
    np.testing.assert_array_equal(mask['layer1']['bias'], [False, False])
    np.testing.assert_array_equal(mask['layer2']['kernel'], [[True], [False]])
    np.testing.assert_array_equal(mask['layer2']['bias'], [True])


@pytest.mark.parametrize('sparsity', [0.0, 0.1, 0.5, 0.7, 0.9, 0.95, 0.99, 0.999])
def test_kept_count_is_exact(sparsity):
    params = {'a': {'kernel': jnp.asarray(RNG.normal(size=(37, 41)))}, 'b': {'kernel': jnp.asarray(RNG.normal(size=(17,)))}}
    total = 37 * 41 + 17
    mask = masks.magnitude_mask(params, sparsity)
    assert sum(int(leaf.sum()) for leaf in jax.tree.leaves(mask)) == max(1, round(total * (1 - sparsity)))


def test_ties_go_to_the_lower_flat_index():
    scores = {'a': jnp.ones(4), 'b': jnp.ones(4)}
    mask = masks.top_k_mask(scores, sparsity=0.5)
    np.testing.assert_array_equal(mask['a'], [True] * 4)
    np.testing.assert_array_equal(mask['b'], [False] * 4)


def test_kernels_only_keeps_every_bias_and_prunes_kernels_exactly():
    params, *_ = linear_problem()
    mask = masks.magnitude_mask(params, 0.5, kernels_only=True)
    assert bool(mask['dense']['bias'].all())
    assert int(mask['dense']['kernel'].sum()) == round(24 * 0.5)


def test_zero_biases_score_zero_and_are_pruned_first():
    # The reference's consequence: biases start at zero, so at any sparsity above
    # (number of biases / N) every bias is pruned.
    params, kernel, _, images, labels = linear_problem()
    params['dense']['bias'] = jnp.zeros(4)
    mask = masks.snip_mask(linear_apply, params, jnp.asarray(images, jnp.float32), jnp.asarray(labels), 4 / 28 + 0.01)
    assert not bool(mask['dense']['bias'].any())


def test_random_masks_have_the_exact_count_and_depend_on_the_key():
    params = {'kernel': jnp.zeros((50, 20))}
    first = masks.random_mask(jax.random.PRNGKey(0), params, 0.9)
    second = masks.random_mask(jax.random.PRNGKey(1), params, 0.9)
    assert int(first['kernel'].sum()) == int(second['kernel'].sum()) == 100
    assert bool((first['kernel'] != second['kernel']).any())
    again = masks.random_mask(jax.random.PRNGKey(0), params, 0.9)
    np.testing.assert_array_equal(first['kernel'], again['kernel'])


def test_magnitude_keeps_the_largest_weights():
    params = {'kernel': jnp.array([0.1, -5.0, 0.3, 2.0, -0.2])}
    np.testing.assert_array_equal(masks.magnitude_mask(params, 0.6)['kernel'], [False, True, False, True, False])


def test_sparsity_zero_keeps_everything():
    params, *_ = linear_problem()
    mask = masks.make_mask('snip', key=jax.random.PRNGKey(0), params=params, sparsity=0.0)
    assert all(bool(leaf.all()) for leaf in jax.tree.leaves(mask))


@pytest.mark.parametrize('sparsity', [-0.1, 1.0, 1.5])
def test_sparsity_outside_the_unit_interval_is_refused(sparsity):
    with pytest.raises(ValueError, match=r'sparsity must be in \[0, 1\)'):
        masks.magnitude_mask({'kernel': jnp.ones(4)}, sparsity)


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match="unknown pruning method 'grasp'.*snip, random, magnitude"):
        masks.make_mask('grasp', key=jax.random.PRNGKey(0), params={'kernel': jnp.ones(2)}, sparsity=0.5)


def test_density_report_counts_each_leaf():
    mask = {'conv': {'bias': jnp.array([True, False]), 'kernel': jnp.array([[True, True], [False, True]])}}
    rows = masks.density_report(mask)
    assert [(row.name, row.kept, row.total) for row in rows] == [('conv/bias', 1, 2), ('conv/kernel', 3, 4)]
    assert 'total' in masks.format_density_report(mask).splitlines()[-1]


def test_snip_is_vmappable_over_per_trial_params():
    params, *_ = linear_problem()
    images = jnp.asarray(RNG.normal(size=(120, 6, 1, 1)), jnp.float32)
    labels = jnp.asarray(RNG.integers(0, 4, size=120))
    stacked = jax.tree.map(lambda leaf: jnp.stack([leaf, -2 * leaf]), params)
    batched = jax.vmap(lambda p: masks.snip_mask(linear_apply, p, images, labels, 0.5))(stacked)
    for trial in range(2):
        single = masks.snip_mask(linear_apply, jax.tree.map(lambda leaf: leaf[trial], stacked), images, labels, 0.5)
        for got, want in zip(jax.tree.leaves(batched), jax.tree.leaves(single)):
            np.testing.assert_array_equal(got[trial], want)


def test_snip_prunes_every_bias_of_simple_cnn_at_sparsity_09():
    # REFERENCE.md: biases start at zero, so their SNIP score is exactly zero and above
    # (number of biases / N) = 106 / 62,346 sparsity the reference's sparse networks have none.
    from dps_jax import models, trial
    model = models.SimpleCNN()
    params = jax.jit(lambda seed: trial.init_params(model, (28, 28, 1), seed))(0)
    images = jnp.asarray(RNG.normal(size=(200, 28, 28, 1)), jnp.float32)
    labels = jnp.asarray(RNG.integers(0, 10, size=200))
    apply_fn = lambda p, x: model.apply({'params': p}, x)
    mask = jax.jit(lambda p: masks.snip_mask(apply_fn, p, images, labels, 0.9))(params)
    for layer in ('conv1', 'conv2', 'dense'):
        assert not bool(mask[layer]['bias'].any()), layer
    assert sum(int(leaf.sum()) for leaf in jax.tree.leaves(mask)) == round(62346 * 0.1)
