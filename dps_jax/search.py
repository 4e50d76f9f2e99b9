"""Metaparameter search spaces and quasi-random (Sobol) trial points.

The points follow the reference study: an unscrambled Sobol sequence whose all-zeros first
point is skipped, so the first trial sits at the centre of the box. The same points are used
at every batch size and sparsity, so a cell's trials are comparable across the grid.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

SCALES = ('log', 'reverse_log', 'linear', 'int')


class Parameter(NamedTuple):
    """One searched metaparameter: a closed range [low, high] and how the unit interval maps to it.

    Scales, as the reference maps a unit coordinate u:
      log          low * (high / low) ** u (base-10 logarithms, as the reference computes it);
      reverse_log  1 - value log-uniform, u = 0 at HIGH: 1 - 10 ** (log10(1 - high)
                   + u * (log10(1 - low) - log10(1 - high))), so momentum 0.9999 at u = 0;
      linear       low + u * (high - low);
      int          int(low + u * (high - low)): truncated, not rounded.
    """
    low: float
    high: float
    scale: str


# The reference study's space (REFERENCE.md, "Metaparameter search"): the default of
# config.search_space (dps_jax/config.py builds it from this) and the space of a results store
# whose config.json predates that field.
SEARCH_SPACE: Mapping[str, Parameter] = {
        'learning_rate': Parameter(1e-4, 1.0, 'log'),
        'momentum': Parameter(0.9, 0.9999, 'reverse_log'),
        'decay_steps': Parameter(30000, 60000, 'int'),
        'end_learning_rate_factor': Parameter(1e-4, 0.1, 'log'),
}
PARAMETER_FIELDS = Parameter._fields  # ('low', 'high', 'scale'): the fields of a config.search_space entry


def space_as_dict(space: Mapping[str, Parameter]) -> dict[str, dict[str, Any]]:
    """`space` as plain nested dicts {name: {'low', 'high', 'scale'}}: its form in a config and in JSON."""
    return {name: dict(parameter._asdict()) for name, parameter in space.items()}


def space_from_config(search_space: Mapping[str, Mapping[str, Any]]) -> dict[str, Parameter]:
    """The {name: Parameter} of a config's search_space (a ConfigDict, or its dict read from config.json)."""
    return {name: Parameter(*(entry[field] for field in PARAMETER_FIELDS)) for name, entry in search_space.items()}


def study_space(config: Mapping[str, Any]) -> dict[str, Parameter]:
    """A study config's search space; the reference's for a config.json written before config.search_space."""
    search_space = config.get('search_space')
    return dict(SEARCH_SPACE) if search_space is None else space_from_config(search_space)


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)


def range_problem(parameter: Parameter) -> tuple[str, str] | None:
    """The first thing wrong with a range as (the field at fault, why), or None when every scale rule holds.

    The rules keep every mapped value finite and inside [low, high]: a log scale takes logarithms
    of low and high, a reverse-log scale of 1 - low and 1 - high, and an int scale truncates (a
    low of 1.5 would give 1).
    """
    if parameter.scale not in SCALES:
        return 'scale', f'the scale must be one of: {", ".join(SCALES)}'
    for field in ('low', 'high'):
        if not _is_number(getattr(parameter, field)):
            return field, f'{field} must be a finite number'
    if not parameter.low < parameter.high:
        return 'low', f'low must be below high={parameter.high!r}'
    if parameter.scale == 'log' and parameter.low <= 0:
        return 'low', 'a log scale needs low > 0'
    if parameter.scale == 'reverse_log' and parameter.high >= 1:
        return 'high', 'a reverse_log scale needs high < 1'
    if parameter.scale == 'int':
        for field in ('low', 'high'):
            if not float(getattr(parameter, field)).is_integer():
                return field, 'an int scale needs whole-number bounds'
    return None

# Sobol's primitive polynomials and initial direction numbers m_1..m_degree for dimensions 1-40,
# as published by Bratley and Fox (ACM TOMS Algorithm 659, 1988) and used by the reference's
# generator. A polynomial is written as the integer of its binary coefficients (x^2 + x + 1 = 7);
# dimension 1 (polynomial 1) has every direction number equal to 1. scipy's Sobol uses Joe and
# Kuo's numbers, which agree with these in dimensions 1-2 only.
SOBOL_DIRECTION_TABLE: tuple[tuple[int, tuple[int, ...]], ...] = (
    (1, (1,)), (3, (1,)), (7, (1, 1)), (11, (1, 3, 7)), (13, (1, 1, 5)),
    (19, (1, 3, 1, 1)), (25, (1, 1, 3, 7)), (37, (1, 3, 3, 9, 9)), (59, (1, 3, 7, 13, 3)),
    (47, (1, 1, 5, 11, 27)), (61, (1, 3, 5, 1, 15)), (55, (1, 1, 7, 3, 29)), (41, (1, 3, 7, 7, 21)),
    (67, (1, 1, 1, 9, 23, 37)), (97, (1, 3, 3, 5, 19, 33)), (91, (1, 1, 3, 13, 11, 7)),
    (109, (1, 1, 7, 13, 25, 5)), (103, (1, 3, 5, 11, 7, 11)), (115, (1, 1, 1, 3, 13, 39)),
    (131, (1, 3, 1, 15, 17, 63, 13)), (193, (1, 1, 5, 5, 1, 27, 33)), (137, (1, 3, 3, 3, 25, 17, 115)),
    (145, (1, 1, 3, 15, 29, 15, 41)), (143, (1, 3, 1, 7, 3, 23, 79)), (241, (1, 3, 7, 9, 31, 29, 17)),
    (157, (1, 1, 5, 13, 11, 3, 29)), (185, (1, 3, 1, 9, 5, 21, 119)), (167, (1, 1, 3, 1, 23, 13, 75)),
    (229, (1, 3, 3, 11, 27, 31, 73)), (171, (1, 1, 7, 7, 19, 25, 105)), (213, (1, 3, 5, 5, 21, 9, 7)),
    (191, (1, 1, 1, 15, 5, 49, 59)), (253, (1, 1, 1, 1, 1, 33, 65)), (203, (1, 3, 5, 15, 17, 19, 21)),
    (211, (1, 1, 7, 11, 13, 29, 3)), (239, (1, 3, 7, 5, 7, 11, 113)), (247, (1, 1, 5, 3, 15, 19, 61)),
    (285, (1, 3, 1, 1, 9, 27, 89, 7)), (369, (1, 1, 3, 7, 31, 15, 45, 23)),
    (299, (1, 3, 3, 9, 9, 25, 107, 39)),
)
MAX_SOBOL_DIMENSION = len(SOBOL_DIRECTION_TABLE)
SOBOL_BITS = 30  # points are multiples of 2^-30: at most 2^30 - 1 of them


def sobol_direction_numbers(dimension: int, bits: int = SOBOL_BITS) -> np.ndarray:
    """Direction numbers v[d, j] = m_j 2^(bits - j) as integers; int64 (dimension, bits).

    m_j beyond the initial ones follow Sobol's recurrence for the dimension's polynomial of
    degree s with coefficients a_1..a_(s-1):
    m_j = 2 a_1 m_(j-1) ^ 4 a_2 m_(j-2) ^ ... ^ 2^s m_(j-s) ^ m_(j-s).
    """
    numbers = np.zeros((dimension, bits), dtype=np.int64)
    for d, (polynomial, initial) in enumerate(SOBOL_DIRECTION_TABLE[:dimension]):
        degree = polynomial.bit_length() - 1
        m = list(initial) + [1] * (bits - len(initial)) if degree == 0 else list(initial)
        for j in range(len(m), bits):
            value = m[j - degree] ^ (m[j - degree] << degree)
            for k in range(1, degree):
                if (polynomial >> (degree - k)) & 1:
                    value ^= m[j - k] << k
            m.append(value)
        numbers[d] = [m[j] << (bits - 1 - j) for j in range(bits)]
    return numbers


def unit_sobol_points(num_points: int, dimension: int) -> np.ndarray:
    """The reference's Sobol points 1..num_points (the all-zeros point 0 skipped); (num_points, dimension).

    Point i is the XOR of the direction numbers of the set bits of i's Gray code (Antonov and
    Saleev's order), so the first point is the centre of the box.
    """
    if num_points < 1:
        raise ValueError(f'num_points must be >= 1, got {num_points}')
    if not 1 <= dimension <= MAX_SOBOL_DIMENSION:
        raise ValueError(f'dimension must be in [1, {MAX_SOBOL_DIMENSION}], got {dimension}')
    if num_points >= 1 << SOBOL_BITS:
        raise ValueError(f'num_points must be below 2^{SOBOL_BITS}, got {num_points}')
    numbers = sobol_direction_numbers(dimension)
    index = np.arange(1, num_points + 1, dtype=np.int64)
    gray = index ^ (index >> 1)
    points = np.zeros((num_points, dimension), dtype=np.int64)
    for bit in range(SOBOL_BITS):
        points ^= np.where(((gray >> bit) & 1).astype(bool)[:, None], numbers[:, bit][None, :], 0)
    return points / float(1 << SOBOL_BITS)


def to_range(unit: np.ndarray, parameter: Parameter) -> np.ndarray:
    """Maps points in [0, 1] to `parameter`'s range on its scale, with the reference's arithmetic."""
    unit = np.asarray(unit, dtype=np.float64)
    low, high = float(parameter.low), float(parameter.high)
    if parameter.scale == 'log':
        return 10.0 ** (unit * (np.log10(high) - np.log10(low)) + np.log10(low))
    if parameter.scale == 'reverse_log':
        return 1.0 - 10.0 ** (unit * (np.log10(1.0 - low) - np.log10(1.0 - high)) + np.log10(1.0 - high))
    if parameter.scale == 'linear':
        return unit * (high - low) + low
    if parameter.scale == 'int':
        # int() truncates towards zero; the values are >= low, so floor is the same.
        return np.floor(unit * (high - low) + low).astype(np.int64)
    raise ValueError(f'unknown scale {parameter.scale!r}; accepted: {", ".join(SCALES)}')


def to_unit(value: np.ndarray, parameter: Parameter) -> np.ndarray:
    """Inverse of `to_range`: where a value sits in [0, 1] on its parameter's scale."""
    value = np.asarray(value, dtype=np.float64)
    low, high = float(parameter.low), float(parameter.high)
    if parameter.scale == 'log':
        return (np.log10(value) - np.log10(low)) / (np.log10(high) - np.log10(low))
    if parameter.scale == 'reverse_log':
        return ((np.log10(1.0 - value) - np.log10(1.0 - high))
                / (np.log10(1.0 - low) - np.log10(1.0 - high)))
    if parameter.scale in ('linear', 'int'):
        return (value - low) / (high - low)
    raise ValueError(f'unknown scale {parameter.scale!r}; accepted: {", ".join(SCALES)}')


def validate_space(names: Sequence[str], space: Mapping[str, Parameter] = SEARCH_SPACE) -> None:
    """Raises ValueError naming any searched name not in `space` or any malformed range."""
    if not names:
        raise ValueError(f'search names must not be empty; accepted: {", ".join(space)}')
    for name in names:
        if name not in space:
            raise ValueError(f'unknown search parameter {name!r}; accepted: {", ".join(space)}')
        problem = range_problem(space[name])
        if problem is not None:
            field, why = problem
            raise ValueError(f'{name}.{field}={getattr(space[name], field)!r} is not accepted: {why}')


def search_points(names: Sequence[str], num_points: int,
                                    space: Mapping[str, Parameter] = SEARCH_SPACE) -> dict[str, np.ndarray]:
    """Trial metaparameters: {name: array of shape (num_points,)}, Sobol dimension i = names[i]."""
    validate_space(names, space)
    unit = unit_sobol_points(num_points, len(names))
    return {name: to_range(unit[:, i], space[name]) for i, name in enumerate(names)}


def is_on_edge(value: float, parameter: Parameter, tolerance: float = 0.05) -> bool:
    """Whether `value` lies within `tolerance` (in unit-interval terms) of either end of the range."""
    unit = float(to_unit(value, parameter))
    return unit <= tolerance or unit >= 1.0 - tolerance
