"""Metaparameter search spaces and quasi-random (Sobol) trial points.

The points follow the reference study: an unscrambled Sobol sequence whose all-zeros first
point is skipped, so the first trial sits at the centre of the box. The same points are used
at every batch size and sparsity, so a cell's trials are comparable across the grid.
"""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple, Sequence

import numpy as np
from scipy.stats import qmc

SCALES = ('log', 'reverse_log', 'linear', 'int')


class Parameter(NamedTuple):
    """One searched metaparameter: a closed range [low, high] and how the unit interval maps to it."""
    low: float
    high: float
    scale: str


# The reference study's space (REFERENCE.md, "Metaparameter search").
SEARCH_SPACE: Mapping[str, Parameter] = {
        'learning_rate': Parameter(1e-4, 1.0, 'log'),
        'momentum': Parameter(0.9, 0.9999, 'reverse_log'),
        'decay_steps': Parameter(30000, 60000, 'int'),
        'end_learning_rate_factor': Parameter(1e-4, 0.1, 'log'),
}


def unit_sobol_points(num_points: int, dimension: int) -> np.ndarray:
    """The first `num_points` unscrambled Sobol points after the all-zeros one; (num_points, dimension) in [0, 1)."""
    if num_points < 1:
        raise ValueError(f'num_points must be >= 1, got {num_points}')
    if dimension < 1:
        raise ValueError(f'dimension must be >= 1, got {dimension}')
    sampler = qmc.Sobol(d=dimension, scramble=False)
    # random_base2 draws a power of two, which keeps scipy's balance warning quiet.
    exponent = max(1, math.ceil(math.log2(num_points + 1)))
    return sampler.random_base2(exponent)[1:num_points + 1]


def to_range(unit: np.ndarray, parameter: Parameter) -> np.ndarray:
    """Maps points in [0, 1] to `parameter`'s range on its scale; ints for scale 'int'."""
    unit = np.asarray(unit, dtype=np.float64)
    low, high = float(parameter.low), float(parameter.high)
    if parameter.scale == 'log':
        return np.exp(np.log(low) + unit * (np.log(high) - np.log(low)))
    if parameter.scale == 'reverse_log':
        # 1 - value is log-uniform, which spreads points towards 1 (momentum 0.99, 0.999, ...).
        gap_low, gap_high = 1.0 - low, 1.0 - high
        return 1.0 - np.exp(np.log(gap_low) + unit * (np.log(gap_high) - np.log(gap_low)))
    if parameter.scale == 'linear':
        return low + unit * (high - low)
    if parameter.scale == 'int':
        return np.rint(low + unit * (high - low)).astype(np.int64)
    raise ValueError(f'unknown scale {parameter.scale!r}; accepted: {", ".join(SCALES)}')


def to_unit(value: np.ndarray, parameter: Parameter) -> np.ndarray:
    """Inverse of `to_range`: where a value sits in [0, 1] on its parameter's scale."""
    value = np.asarray(value, dtype=np.float64)
    low, high = float(parameter.low), float(parameter.high)
    if parameter.scale == 'log':
        return (np.log(value) - np.log(low)) / (np.log(high) - np.log(low))
    if parameter.scale == 'reverse_log':
        return (np.log(1.0 - value) - np.log(1.0 - low)) / (np.log(1.0 - high) - np.log(1.0 - low))
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
        parameter = space[name]
        if parameter.scale not in SCALES:
            raise ValueError(f'{name}: unknown scale {parameter.scale!r}; accepted: {", ".join(SCALES)}')
        if not parameter.low < parameter.high:
            raise ValueError(f'{name}: low {parameter.low} must be below high {parameter.high}')
        if parameter.scale == 'log' and parameter.low <= 0:
            raise ValueError(f'{name}: a log scale needs low > 0, got {parameter.low}')
        if parameter.scale == 'reverse_log' and parameter.high >= 1:
            raise ValueError(f'{name}: a reverse-log scale needs high < 1, got {parameter.high}')


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
