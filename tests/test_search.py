"""Search spaces and Sobol trial points, against the reference study's own metaparameters."""

import json
import math
import os

import ml_collections
import numpy as np
import pytest
from scipy.stats import qmc

from dps_jax import config as config_lib
from dps_jax import search, study

# The reference code's metaparameters for its three searches, 100 points each (unit Sobol
# coordinates and mapped values), produced by the reference's generator, not by this package.
ORACLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'reference_metaparameters.json')
REFERENCE_SEARCHES = json.load(open(ORACLE_PATH))['searches']
ALL_FOUR = 'learning_rate,momentum,decay_steps,end_learning_rate_factor'


@pytest.mark.parametrize('searched', sorted(REFERENCE_SEARCHES))
def test_unit_points_equal_the_reference_generator(searched):
    names = searched.split(',')
    unit = search.unit_sobol_points(100, len(names))
    for i, name in enumerate(names):
        np.testing.assert_array_equal(unit[:, i], REFERENCE_SEARCHES[searched]['unit'][name], err_msg=name)


@pytest.mark.parametrize('searched', sorted(REFERENCE_SEARCHES))
def test_mapped_values_equal_the_reference(searched):
    names = searched.split(',')
    points = search.search_points(names, 100)
    for name in names:
        expected = REFERENCE_SEARCHES[searched]['values'][name]
        if name == 'decay_steps':
            assert points[name].dtype.kind == 'i'
            np.testing.assert_array_equal(points[name], expected)
        else:
            np.testing.assert_allclose(points[name], expected, rtol=1e-12, atol=0, err_msg=name)


def test_first_two_dimensions_equal_scipy_and_the_third_does_not():
    # scipy (Joe and Kuo's direction numbers) agrees with Bratley and Fox's in dimensions 1-2.
    scipy_points = qmc.Sobol(d=3, scramble=False).random_base2(7)[1:101]
    ours = search.unit_sobol_points(100, 3)
    np.testing.assert_array_equal(ours[:, :2], scipy_points[:, :2])
    assert not np.array_equal(ours[:, 2], scipy_points[:, 2])


def test_third_dimension_by_hand():
    # Dimension 3: x^2 + x + 1 with m = 1, 1, so v = 1/2, 1/4, then m_3 = 2 m_2 ^ 4 m_1 ^ m_1 = 7: 7/8.
    # Points in Gray-code order: v1, v1^v2, v2, v2^v3, v1^v2^v3; in binary .100, .110, .010, .101, .001.
    np.testing.assert_array_equal(search.unit_sobol_points(5, 3)[:, 2], [0.5, 0.75, 0.25, 0.625, 0.125])


def test_learning_rate_alone_starts_at_the_reference_values():
    rates = search.search_points(['learning_rate'], 6)['learning_rate']
    np.testing.assert_allclose(rates, [0.01, 0.1, 0.001, 10**-2.5, 10**-0.5, 10**-1.5], rtol=1e-12)


def test_first_point_is_the_centre_of_the_box_in_every_dimension():
    unit = search.unit_sobol_points(5, search.MAX_SOBOL_DIMENSION)
    np.testing.assert_array_equal(unit[0], np.full(search.MAX_SOBOL_DIMENSION, 0.5))


def test_every_dimension_is_balanced_over_a_power_of_two():
    # The first 2^k points of a Sobol sequence (with point 0) put one point in each dyadic interval.
    unit = np.concatenate([np.zeros((1, search.MAX_SOBOL_DIMENSION)),
                           search.unit_sobol_points(63, search.MAX_SOBOL_DIMENSION)])
    for d in range(search.MAX_SOBOL_DIMENSION):
        np.testing.assert_array_equal(np.sort(np.floor(unit[:, d] * 64)), np.arange(64), err_msg=f'dimension {d + 1}')


def test_momentum_is_0_9999_at_zero_and_0_9_at_one():
    parameter = search.SEARCH_SPACE['momentum']
    np.testing.assert_allclose(search.to_range(np.array([0.0, 0.5, 1.0]), parameter),
                               [0.9999, 1 - 10**-2.5, 0.9], rtol=1e-12)


def test_momentum_of_the_second_trial_is_the_reference_value():
    # REFERENCE.md: trial 2 (learning rate 0.1) has momentum 1 - 10^(-4 + 3 * 0.25).
    momentum = search.search_points(['learning_rate', 'momentum'], 3)['momentum']
    assert momentum[1] == pytest.approx(1 - 10**-3.25, rel=1e-12)
    assert momentum[1] == pytest.approx(0.99944, abs=1e-5)


def test_decay_steps_are_truncated_not_rounded():
    parameter = search.SEARCH_SPACE['decay_steps']
    np.testing.assert_array_equal(search.to_range(np.array([0.0, 0.99999 / 30000, 0.5, 1.0 - 1e-9, 1.0]), parameter),
                                  [30000, 30000, 45000, 59999, 60000])


def test_range_ends_map_to_the_bounds():
    parameter = search.SEARCH_SPACE['end_learning_rate_factor']
    np.testing.assert_allclose(search.to_range(np.array([0.0, 1.0]), parameter), [1e-4, 0.1], rtol=1e-12)


def test_to_unit_inverts_to_range_for_every_scale():
    unit = np.array([0.0, 0.1, 0.5, 0.9, 1.0])
    for name, parameter in search.SEARCH_SPACE.items():
        if parameter.scale == 'int':
            continue
        np.testing.assert_allclose(search.to_unit(search.to_range(unit, parameter), parameter), unit,
                                   atol=1e-12, err_msg=name)


def test_edge_detection():
    parameter = search.SEARCH_SPACE['learning_rate']
    assert search.is_on_edge(1.0, parameter)
    assert search.is_on_edge(1.2e-4, parameter)
    assert not search.is_on_edge(0.01, parameter)


def test_unknown_parameter_is_named_in_the_error():
    with pytest.raises(ValueError, match="unknown search parameter 'weight_decay'.*learning_rate"):
        search.search_points(['weight_decay'], 4)


def test_zero_points_is_an_error():
    with pytest.raises(ValueError, match='num_points'):
        search.search_points(['learning_rate'], 0)


def test_too_many_dimensions_is_an_error():
    with pytest.raises(ValueError, match='dimension must be in \\[1, 40\\]'):
        search.unit_sobol_points(4, 41)


def test_a_malformed_range_is_an_error_naming_the_parameter_and_field():
    space = {**search.SEARCH_SPACE, 'learning_rate': search.Parameter(0.0, 1.0, 'log')}
    with pytest.raises(ValueError, match='learning_rate.low=0.0 is not accepted: a log scale needs low > 0'):
        search.search_points(['learning_rate'], 4, space)


def test_edge_detection_is_relative_to_the_range_given():
    # 1.0 is the top of the reference's learning-rate range, and well inside [1e-4, 10].
    assert search.is_on_edge(1.0, search.Parameter(1e-4, 1.0, 'log'))
    assert not search.is_on_edge(1.0, search.Parameter(1e-4, 10.0, 'log'))
    # 0.01 is the centre of the reference's range, and the bottom of [0.01, 1].
    assert not search.is_on_edge(0.01, search.Parameter(1e-4, 1.0, 'log'))
    assert search.is_on_edge(0.01, search.Parameter(0.01, 1.0, 'log'))


# --- Search spaces from the config (config.search_space).

def study_config(search_names, num_trials=100, **ranges):
    """A validated study config searching `search_names`, with `ranges` {name: (low, high, scale)} replaced."""
    config = config_lib.base_study_config()
    config.optimizer, config.schedule = 'nesterov', 'linear'  # every metaparameter in use
    config.search_names = tuple(search_names)
    config.num_trials = num_trials
    for name, (low, high, scale) in ranges.items():
        config.search_space[name] = ml_collections.ConfigDict({'low': low, 'high': high, 'scale': scale})
    config_lib.validate_study_config(config)
    return config


def test_the_config_default_space_is_the_reference_space():
    assert search.space_from_config(config_lib.base_study_config().search_space) == dict(search.SEARCH_SPACE)


def test_a_config_without_search_space_has_the_reference_space():
    # A config.json written before config.search_space existed.
    assert search.study_space({'search_names': ['learning_rate']}) == dict(search.SEARCH_SPACE)


def test_the_default_config_gives_the_reference_first_learning_rates():
    rates = study.trial_metaparameters(study_config(['learning_rate'], num_trials=6))['learning_rate']
    np.testing.assert_allclose(rates, [0.01, 0.1, 0.001, 10**-2.5, 10**-0.5, 10**-1.5], rtol=1e-12, atol=0)


@pytest.mark.parametrize('searched', sorted(REFERENCE_SEARCHES))
def test_the_default_config_gives_the_reference_values(searched):
    values = study.trial_metaparameters(study_config(searched.split(',')))
    for name, expected in REFERENCE_SEARCHES[searched]['values'].items():
        np.testing.assert_allclose(values[name], expected, rtol=1e-12, atol=0, err_msg=name)


def test_a_linear_learning_rate_range_maps_the_reference_unit_points():
    unit = np.array(REFERENCE_SEARCHES['learning_rate']['unit']['learning_rate'])
    values = study.trial_metaparameters(study_config(['learning_rate'], learning_rate=(1e-3, 0.5, 'linear')))
    np.testing.assert_allclose(values['learning_rate'], 1e-3 + unit * (0.5 - 1e-3), rtol=1e-15, atol=0)


def test_a_narrower_log_learning_rate_range_by_hand():
    # Unit points 1/2, 3/4, 1/4, 3/8, 7/8, 5/8 on log10 lr = -3 + 2u.
    values = study.trial_metaparameters(study_config(['learning_rate'], num_trials=6,
                                                     learning_rate=(1e-3, 0.1, 'log')))
    np.testing.assert_allclose(values['learning_rate'], [10**-2, 10**-1.5, 10**-2.5, 10**-2.25, 10**-1.25, 10**-1.75],
                               rtol=1e-12, atol=0)


def test_every_scale_of_a_four_name_search_maps_the_reference_unit_points():
    unit = REFERENCE_SEARCHES[ALL_FOUR]['unit']
    values = study.trial_metaparameters(study_config(
        ALL_FOUR.split(','), learning_rate=(0.01, 0.2, 'linear'), momentum=(0.5, 0.99, 'reverse_log'),
        decay_steps=(1000, 2001, 'int'), end_learning_rate_factor=(0.0, 1.0, 'linear')))
    np.testing.assert_allclose(values['learning_rate'], [0.01 + u * 0.19 for u in unit['learning_rate']],
                               rtol=1e-12, atol=0)
    # 1 - momentum log-uniform in [0.01, 0.5], u = 0 at momentum 0.99.
    expected_momentum = [1 - 10 ** (math.log10(1 - 0.99) + u * (math.log10(0.5) - math.log10(1 - 0.99)))
                         for u in unit['momentum']]
    np.testing.assert_allclose(values['momentum'], expected_momentum, rtol=1e-12, atol=0)
    assert values['decay_steps'].tolist() == [int(1000 + u * 1001) for u in unit['decay_steps']]
    np.testing.assert_allclose(values['end_learning_rate_factor'], unit['end_learning_rate_factor'],
                               rtol=0, atol=1e-15)


def test_a_changed_range_leaves_the_other_searched_dimensions_alone():
    default = study.trial_metaparameters(study_config(['learning_rate', 'momentum']))
    changed = study.trial_metaparameters(study_config(['learning_rate', 'momentum'],
                                                      momentum=(0.0, 0.5, 'linear')))
    np.testing.assert_array_equal(changed['learning_rate'], default['learning_rate'])
    assert not np.array_equal(changed['momentum'], default['momentum'])


def test_an_unsearched_range_changes_no_trial():
    default = study.trial_metaparameters(study_config(['learning_rate']))
    changed = study.trial_metaparameters(study_config(['learning_rate'], momentum=(0.0, 0.5, 'linear')))
    for name in default:
        np.testing.assert_array_equal(changed[name], default[name], err_msg=name)
