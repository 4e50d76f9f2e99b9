"""Search spaces and Sobol trial points."""

import numpy as np
import pytest
from scipy.stats import qmc

from dps_jax import search


def test_learning_rate_alone_starts_at_the_reference_values():
    rates = search.search_points(['learning_rate'], 6)['learning_rate']
    np.testing.assert_allclose(rates, [0.01, 0.1, 0.001, 10**-2.5, 10**-0.5, 10**-1.5], rtol=1e-12)


def test_first_point_is_the_centre_of_the_box_in_every_dimension():
    unit = search.unit_sobol_points(5, 4)
    np.testing.assert_array_equal(unit[0], [0.5, 0.5, 0.5, 0.5])


def test_points_are_the_unscrambled_sobol_sequence_without_its_zero_point():
    expected = qmc.Sobol(d=3, scramble=False).random_base2(4)[1:11]
    np.testing.assert_array_equal(search.unit_sobol_points(10, 3), expected)


def test_reverse_log_makes_one_minus_momentum_log_uniform():
    momentum = search.search_points(['momentum'], 3)['momentum']
    # Centre, then the 3/4 and 1/4 points of log10(1 - m) in [-1, -4].
    np.testing.assert_allclose(1 - momentum, [10**-2.5, 10**-3.25, 10**-1.75], rtol=1e-9)


def test_range_ends_map_to_the_bounds():
    parameter = search.SEARCH_SPACE['momentum']
    np.testing.assert_allclose(search.to_range(np.array([0.0, 1.0]), parameter), [0.9, 0.9999])
    parameter = search.SEARCH_SPACE['end_learning_rate_factor']
    np.testing.assert_allclose(search.to_range(np.array([0.0, 1.0]), parameter), [1e-4, 0.1])


def test_integer_parameters_are_ints_in_range():
    steps = search.search_points(['decay_steps'], 20)['decay_steps']
    assert steps.dtype.kind == 'i'
    assert steps[0] == 45000
    assert steps.min() >= 30000 and steps.max() <= 60000


def test_to_unit_inverts_to_range_for_every_scale():
    unit = np.array([0.0, 0.1, 0.5, 0.9, 1.0])
    for name, parameter in search.SEARCH_SPACE.items():
        if parameter.scale == 'int':
            continue
        np.testing.assert_allclose(search.to_unit(search.to_range(unit, parameter), parameter), unit,
                                   atol=1e-12, err_msg=name)


def test_all_four_parameters_use_one_sobol_dimension_each():
    names = ['learning_rate', 'momentum', 'decay_steps', 'end_learning_rate_factor']
    points = search.search_points(names, 8)
    unit = search.unit_sobol_points(8, 4)
    for i, name in enumerate(names):
        np.testing.assert_allclose(search.to_unit(points[name], search.SEARCH_SPACE[name]), unit[:, i],
                                   atol=2e-5)


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
