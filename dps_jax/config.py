"""Checks on ml-collections configs: every bad value is one clear error naming the field."""

from __future__ import annotations

import numbers
from typing import Any, Sequence

from dps_jax import masks, optim


class ConfigError(ValueError):
    """A config field has a wrong type or value; the message names the field and what is accepted."""


def _get(config: Any, field: str) -> Any:
    try:
        return config[field]
    except (KeyError, AttributeError) as error:
        raise ConfigError(f'config.{field} is missing') from error


def require_choice(config: Any, field: str, choices: Sequence[str]) -> str:
    """The value of a string field that must be one of `choices`."""
    value = _get(config, field)
    if value not in choices:
        raise ConfigError(f'config.{field}={value!r} is not accepted; choose one of: {", ".join(choices)}')
    return value


def require_int(config: Any, field: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """The value of an integer field within [minimum, maximum]."""
    value = _get(config, field)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f'config.{field}={value!r} must be an integer')
    if minimum is not None and value < minimum:
        raise ConfigError(f'config.{field}={value} must be >= {minimum}')
    if maximum is not None and value > maximum:
        raise ConfigError(f'config.{field}={value} must be <= {maximum}')
    return int(value)


def require_float(config: Any, field: str, low: float, high: float, *, low_open: bool = False,
                  high_open: bool = False) -> float:
    """The value of a real field within the interval given (open ends where asked)."""
    value = _get(config, field)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f'config.{field}={value!r} must be a number')
    value = float(value)
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high or value != value:
        interval = f'{"(" if low_open else "["}{low:g}, {high:g}{")" if high_open else "]"}'
        raise ConfigError(f'config.{field}={value!r} is outside {interval}')
    return value


def validate_trial_config(config: Any, num_train_examples: int | None = None) -> None:
    """Checks the fields one trial needs; with the training split size, also the batch size."""
    from dps_jax import data, models  # the data and model modules are heavy to import

    require_choice(config, 'dataset', data.DATASETS)
    require_choice(config, 'data_source', data.SOURCES)
    require_choice(config, 'model', models.MODELS)
    require_float(config, 'sparsity', 0.0, 1.0, high_open=True)
    require_choice(config, 'pruning', masks.METHODS)
    require_int(config, 'snip_batch_size', minimum=1)
    require_choice(config, 'optimizer', optim.OPTIMIZERS)
    require_choice(config, 'schedule', optim.SCHEDULES)
    require_float(config, 'learning_rate', 0.0, float('inf'), low_open=True, high_open=True)
    require_float(config, 'momentum', 0.0, 1.0, high_open=True)
    require_int(config, 'decay_steps', minimum=1)
    require_float(config, 'end_learning_rate_factor', 0.0, 1.0)
    batch_size = require_int(config, 'batch_size', minimum=1)
    if num_train_examples is not None and batch_size > num_train_examples:
        raise ConfigError(f'config.batch_size={batch_size} is larger than the training split '
                          f'({num_train_examples} examples)')
    require_float(config, 'goal_error', 0.0, 1.0, low_open=True, high_open=True)
    check_every = require_int(config, 'check_every', minimum=1)
    max_steps = require_int(config, 'max_steps', minimum=1)
    if max_steps % check_every:
        raise ConfigError(f'config.max_steps={max_steps} must be a multiple of '
                          f'config.check_every={check_every}')
    require_int(config, 'seed', minimum=0)
    require_int(config, 'data_seed', minimum=0)
    require_int(config, 'eval_chunk_size', minimum=1)
