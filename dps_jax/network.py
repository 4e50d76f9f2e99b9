"""Any flax Module as the pure functions a trial needs: init, a training pass and an evaluation pass.

`config.model` names a built-in model ('simple_cnn', 'resnet8'), or imports one:
'package.module:attribute' or 'path/to/file.py:attribute', where the attribute is a flax Module
class or a function returning a Module (either is called with the number of classes), or a
Module instance (used as it is). The Python API also takes a Module object.

Networks with mutable collections (BatchNorm's 'batch_stats') keep them per trial in the trial
state: updated by every training step, used by evaluation. Dropout draws from the 'dropout' RNG
stream with a key per trial and step. A Module says training from evaluation through a
`train` (or `training`) argument of its __call__, or `deterministic` (True in evaluation);
one without such an argument is called with the images only.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from dps_jax import models, precision
from dps_jax import config as config_lib
from dps_jax.config import ConfigError

MODE_ARGUMENTS = ('train', 'training', 'deterministic')  # how a __call__ may take the mode
DROPOUT_STREAM = 'dropout'
OBJECT_PREFIX = config_lib.OBJECT_PREFIX  # config.model of a Module object given to the Python API


class ModelError(ConfigError):
    """config.model cannot be turned into a network; the message says why in one line."""


class Network(NamedTuple):
    """A network as pure functions; model_state holds the non-parameter collections ({} if none)."""
    init: Callable         # (key, example_shape) -> (params, model_state)
    train_apply: Callable  # (params, model_state, images, dropout_key) -> (logits, model_state)
    eval_apply: Callable   # (params, model_state, images) -> logits
    collections: tuple     # names of the mutable collections, e.g. ('batch_stats',); () if none

    @property
    def has_state(self) -> bool:
        return bool(self.collections)


def from_apply(apply_fn: Callable) -> Network:
    """A network without state or dropout from a plain (params, images) -> logits."""
    return Network(init=None, train_apply=lambda params, model_state, images, key: (apply_fn(params, images),
                                                                                    model_state),
                   eval_apply=lambda params, model_state, images: apply_fn(params, images), collections=())


def as_network(network_or_apply: Network | Callable) -> Network:
    """A Network as given, or `from_apply` of a plain apply function."""
    return network_or_apply if isinstance(network_or_apply, Network) else from_apply(network_or_apply)


def mode_argument(module: nn.Module) -> str | None:
    """The name of the __call__ argument that says training or evaluation (MODE_ARGUMENTS), or None."""
    call = getattr(type(module), '__call__', None)
    if call is None:
        return None
    parameters = inspect.signature(call).parameters
    return next((name for name in MODE_ARGUMENTS if name in parameters), None)


def _mode(argument: str | None, training: bool) -> dict:
    if argument is None:
        return {}
    return {argument: (not training) if argument == 'deterministic' else training}


def from_module(module: nn.Module, example_shape: tuple, matmul_precision: str | None = None,
                compute_dtype: str = 'float32') -> Network:
    """The Network of a flax Module on images of `example_shape` (H, W, C), at `matmul_precision`,
    training and evaluating in `compute_dtype` (precision.COMPUTE_DTYPES; see in_compute_dtype).

    Initialization runs in evaluation mode, so BatchNorm's statistics start at their initial
    values and no dropout key is needed. An object that is not an nn.Module but has its
    init(key, images) / apply(variables, images) is taken as a network without state or dropout.
    """
    argument = mode_argument(module)
    is_flax = isinstance(module, nn.Module)
    dummy = jnp.zeros((1,) + tuple(example_shape), jnp.float32)
    try:
        shapes = jax.eval_shape(lambda key: module.init(key, dummy, **_mode(argument, False)), jax.random.PRNGKey(0))
    except Exception as error:
        raise ModelError(f'model {describe_module(module)} fails on images of shape {tuple(example_shape)}: '
                         f'{_first_line(error)}') from None
    if 'params' not in shapes:
        raise ModelError(f'model {describe_module(module)} has no parameters')
    collections = tuple(sorted(name for name in shapes if name != 'params'))
    if collections and argument is None:
        raise ModelError(f'model {describe_module(module)} has mutable collections ({", ".join(collections)}) but its '
                         f'__call__ takes none of the arguments {", ".join(MODE_ARGUMENTS)}: it cannot be told '
                         f'training from evaluation')

    def init(key, shape):
        variables = module.init(key, jnp.zeros((1,) + tuple(shape), jnp.float32), **_mode(argument, False))
        variables = dict(variables)
        params = variables.pop('params')
        return params, variables

    def train_apply(params, model_state, images, dropout_key):
        rngs = {} if dropout_key is None or not is_flax else {'rngs': {DROPOUT_STREAM: dropout_key}}
        if not collections:
            return module.apply({'params': params}, images, **rngs, **_mode(argument, True)), model_state
        logits, updated = module.apply({'params': params, **model_state}, images, **rngs,
                                       mutable=list(collections), **_mode(argument, True))
        return logits, dict(updated)

    def eval_apply(params, model_state, images):
        return module.apply({'params': params, **model_state}, images, **_mode(argument, False))

    if compute_dtype not in precision.COMPUTE_DTYPES:
        raise ValueError(f'compute dtype {compute_dtype!r} is not one of {", ".join(precision.COMPUTE_DTYPES)}')
    if compute_dtype != 'float32':
        train_apply, eval_apply = in_compute_dtype(train_apply, eval_apply, jnp.dtype(compute_dtype))
    return Network(init=init, train_apply=precision.at_matmul_precision(train_apply, matmul_precision),
                   eval_apply=precision.at_matmul_precision(eval_apply, matmul_precision),
                   collections=collections)


def in_compute_dtype(train_apply: Callable, eval_apply: Callable, dtype) -> tuple[Callable, Callable]:
    """(train_apply, eval_apply) computing in `dtype`: parameters and images cast to it on the way in
    (gradients flow back through the cast to the float32 parameters, the master copy), logits back in
    float32 for the loss and the error count, mutable collections back in their own dtypes."""
    def train_in_dtype(params, model_state, images, dropout_key):
        logits, updated = train_apply(precision.cast_floating(params, dtype), model_state,
                                      precision.cast_floating(images, dtype), dropout_key)
        return (logits.astype(jnp.float32),
                jax.tree.map(lambda new, old: new.astype(old.dtype), updated, model_state))

    def eval_in_dtype(params, model_state, images):
        return eval_apply(precision.cast_floating(params, dtype), model_state,
                          precision.cast_floating(images, dtype)).astype(jnp.float32)

    return train_in_dtype, eval_in_dtype


def describe_module(module: Any) -> str:
    """A short name of a Module object: its class."""
    return type(module).__name__


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return f'{type(error).__name__}: {text.splitlines()[0] if text else ""}'


def module_identity(module: nn.Module) -> str:
    """A text naming a Module object in a study's config: 'python:<class>#<digest>' of the class's
    source code (when Python has it) and its fields as printed, memory addresses removed. Two
    objects of one class that differ only in what prints alike (e.g. two initializers, which print
    by name) are the same to it."""
    try:
        source = inspect.getsource(type(module))
    except (OSError, TypeError):
        source = ''
    fields = re.sub(r' at 0x[0-9a-fA-F]+', '', repr(module))
    digest = hashlib.sha1((source + fields).encode()).hexdigest()[:12]
    return f'{OBJECT_PREFIX}{type(module).__name__}#{digest}'


def import_path_digest(model: Any) -> str:
    """A digest of the code an import-path `model` names ('' for any other model): the bytes of the
    whole Python file the path names (for 'package.module:attribute', the module's file as imported,
    or, before it is, as an import would find it), so any edit to it counts, a comment included. The
    bytes, not a syntax tree: Python versions print the same tree differently, and a study may resume
    under another Python. '' too when the file cannot be found (config.plan_only loads no model)."""
    path = _import_path_file(model)
    if not path or not os.path.isfile(path):
        return ''
    with open(path, 'rb') as file:
        return hashlib.sha1(file.read()).hexdigest()[:12]


def _import_path_file(model: Any) -> str | None:
    """The file an import-path `model` names, None for any other model or a namespace package. A
    module not imported yet is found as an import would find it, without running it (its parent
    packages are imported)."""
    if not isinstance(model, str) or not is_import_path(model):
        return None
    where = model.rpartition(':')[0]
    if where.endswith('.py'):
        return os.path.abspath(where)
    if where in sys.modules:
        return getattr(sys.modules[where], '__file__', None)
    try:
        with _on_path(os.getcwd()):  # where _import looks
            spec = importlib.util.find_spec(where)
    except Exception:  # a parent package that is not there or fails to import: the load will say why
        return None
    return spec.origin if spec is not None and spec.has_location else None


def is_import_path(model: str) -> bool:
    """Whether `model` has the form 'package.module:attribute' or 'file.py:attribute'."""
    where, _, attribute = model.rpartition(':')
    return bool(where) and attribute.isidentifier()


@contextlib.contextmanager
def _on_path(folder: str):
    """`folder` at the front of sys.path for the duration (so a model file imports its neighbours)."""
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


def _import(where: str, model: str):
    """The Python module of an import path's left part: a file (loaded afresh, so an edited file is
    read again) or a dotted module name (looked up from the working directory too, as `python -c`
    would: launch.py's own sys.path starts at its folder)."""
    if where.endswith('.py'):
        path = os.path.abspath(where)
        if not os.path.isfile(path):
            raise ModelError(f'config.model={model!r}: no file {path}')
        name = 'dps_jax_user_model_' + hashlib.sha1(path.encode()).hexdigest()[:12]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # flax and dataclasses look a class's module up while it is made
        try:
            with _on_path(os.path.dirname(path)):
                spec.loader.exec_module(module)
        except Exception as error:
            del sys.modules[name]
            raise ModelError(f'config.model={model!r}: importing {path} failed: {_first_line(error)}') from None
        return module
    try:
        with _on_path(os.getcwd()):
            return importlib.import_module(where)
    except Exception as error:
        raise ModelError(f'config.model={model!r}: cannot import {where!r}: {_first_line(error)}') from None


def resolve_module(model: Any, num_classes: int, convolution: str = 'im2col', field: str = 'convolution'
                   ) -> nn.Module:
    """The flax Module that `model` names (see the module docstring) for `num_classes` classes;
    `convolution` (models.CONVOLUTIONS) is how a built-in model convolves, and must be 'im2col' for
    others; `field` is the config field it came from, for the error."""
    if convolution != 'im2col' and not (isinstance(model, str) and model in models.MODELS):
        raise ModelError(f'config.{field}={convolution!r} applies to the built-in models '
                         f'({", ".join(models.MODELS)}), not to config.model={model!r}; use \'im2col\'')
    if isinstance(model, nn.Module):
        return model
    if not isinstance(model, str):
        raise ModelError(f'config.model={model!r} must be a name ({", ".join(models.MODELS)}), '
                         f"'package.module:attribute' or a flax Module")
    if model in models.MODELS:
        return models.get_model(model, num_classes, convolution)
    if model.startswith(OBJECT_PREFIX):
        raise ModelError(f'config.model={model!r} names a Module object given to the Python API; give it again '
                         f'(dps_jax.run_study(config, workdir, model=...))')
    if not is_import_path(model):
        raise ModelError(f"config.model={model!r} is not accepted; choose one of: {', '.join(models.MODELS)}, or "
                         f"an import path 'package.module:attribute' or 'file.py:attribute'")
    where, _, attribute = model.rpartition(':')
    found = getattr(_import(where, model), attribute, None)
    if found is None:
        raise ModelError(f'config.model={model!r}: {where} has no attribute {attribute!r}')
    if isinstance(found, nn.Module):
        return found
    if not callable(found):
        raise ModelError(f'config.model={model!r}: {attribute} is a {type(found).__name__}, not a flax Module class '
                         f'or a function returning one')
    try:
        module = found(num_classes)
    except Exception as error:
        raise ModelError(f'config.model={model!r}: {attribute}({num_classes}) failed: {_first_line(error)}') from None
    if not isinstance(module, nn.Module):
        raise ModelError(f'config.model={model!r}: {attribute}({num_classes}) returned a {type(module).__name__}, '
                         f'not a flax Module')
    return module


def check_logits(network: Network, example_shape: tuple, num_classes: int, name: str) -> None:
    """Raises ModelError unless the network maps (2, *example_shape) images to (2, num_classes) logits
    in evaluation and in training (where it may draw only from the 'dropout' stream)."""
    images = jax.ShapeDtypeStruct((2,) + tuple(example_shape), jnp.float32)

    def logits_of(key, images):
        params, model_state = network.init(key, example_shape)
        return (network.eval_apply(params, model_state, images),
                network.train_apply(params, model_state, images, key)[0])

    try:
        logits, trained = jax.eval_shape(logits_of, jax.random.PRNGKey(0), images)
    except Exception as error:
        raise ModelError(f'model {name} fails on images of shape {tuple(example_shape)}: '
                         f'{_first_line(error)}') from None
    for shape in (logits.shape, trained.shape):
        if shape != (2, num_classes):
            raise ModelError(f'model {name} gives outputs of shape {shape[1:]} per example; the dataset has '
                             f'{num_classes} classes, so logits must have shape ({num_classes},)')
