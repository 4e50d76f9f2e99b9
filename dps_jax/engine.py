"""The vectorized trial engine: N metaparameter trials of one cell in lockstep on one device.

Every trial is the single-trial pytree of dps_jax.trial with a leading trial axis. Training
runs `check_every` steps per lax.scan (batches gathered on device by index, all trials on the
same batch by default, as in the reference), then one vmapped whole-validation-split error for
all trials. The host reads a few numbers per trial once per check, never per step.

Bookkeeping (status, steps-to-result) is host-side numpy keyed by trial index; the device holds
'slots'. Trials that end stop moving (their update is masked out by `active`) and, with
compaction, are dropped into a smaller bucket of slots so they stop costing compute.
"""

from __future__ import annotations

import functools
import math
import os
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dps_jax import parallel, smoothness, trial

RUNNING, REACHED, DIVERGED, EXHAUSTED = range(4)
STATUS_NAMES = trial.STATUSES  # index = code above
UNTIL = ('first', 'all')


class CellResult(NamedTuple):
    """What one cell's run produced; per-trial arrays are indexed by trial (length N)."""
    status: np.ndarray           # int (N,): RUNNING (cell ended first), REACHED, DIVERGED, EXHAUSTED
    steps_to_result: np.ndarray  # int (N,): step of the first check with error <= goal, -1 if none
    best_val_error: np.ndarray   # float (N,): lowest validation error seen
    last_val_error: np.ndarray   # float (N,): validation error at the trial's last check
    steps: np.ndarray            # int (N,): steps the trial trained
    trial_steps_computed: int    # slot-steps the device computed (including ended trials in slots)
    trial_steps_needed: int      # sum of steps of trials while running
    checks: int
    wall_seconds: float
    final_state: Any | None      # stacked TrainState of all N trials in trial order (keep_final_state)
    lipschitz: tuple = ()        # per trial: [(step, L), ...] (measurements.lipschitz_every)
    noise_scale: tuple = ()      # per trial: [(step, B_simple, |G|^2, tr Sigma), ...] (noise_scale_every)

    @property
    def min_steps_to_result(self) -> int | None:
        """The cell's steps-to-result: the minimum over trials, None if no trial reached the goal."""
        reached = self.steps_to_result[self.steps_to_result >= 0]
        return int(reached.min()) if reached.size else None

    @property
    def best_trial(self) -> int | None:
        """The trial with the minimum steps-to-result; ties go to the lower validation error."""
        candidates = np.flatnonzero(self.steps_to_result >= 0)
        if not candidates.size:
            return None
        order = np.lexsort((candidates, self.last_val_error[candidates], self.steps_to_result[candidates]))
        return int(candidates[order[0]])

    def status_names(self) -> list[str]:
        return [STATUS_NAMES[code] for code in self.status]


def stack_trees(trees: Sequence[Any]) -> Any:
    """One pytree with a new leading axis from several of the same structure."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def tree_take(tree: Any, indices: np.ndarray) -> Any:
    """Rows `indices` of every leaf's leading axis."""
    indices = jnp.asarray(indices, jnp.int32)
    return jax.tree.map(lambda leaf: jnp.take(leaf, indices, axis=0), tree)


def tree_concatenate(trees: Sequence[Any]) -> Any:
    return jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *trees)


def _round_up(value: int, multiple: int) -> int:
    return multiple * math.ceil(value / multiple)


def bucket_layout(num_live: int, group_size: int, multiple: int = 1) -> tuple[int, int]:
    """(groups, slots per group) for `num_live` trials with at most `group_size` per group.

    One group: the next power of two, so retirement recompiles only O(log N) times. Several
    groups: as few as fit, balanced and rounded up to a multiple of 4 (N = 100 in groups of at
    most 33 is 4 x 28 slots, not 4 x 33), which bounds both padding and the number of shapes.
    Slots per group are also a multiple of `multiple` (the devices on the mesh's 'trial' axis);
    group_size is raised to it if smaller.
    """
    group_size = _round_up(max(group_size, 1), multiple)
    if num_live <= group_size:
        return 1, min(group_size, _round_up(1 << max(0, math.ceil(math.log2(max(num_live, 1)))), multiple))
    num_groups = math.ceil(num_live / group_size)
    per_group = min(group_size, _round_up(math.ceil(num_live / num_groups), math.lcm(4, multiple)))
    return num_groups, per_group


def bucket_size(num_live: int, group_size: int, multiple: int = 1) -> int:
    """Slots for `num_live` trials (see bucket_layout)."""
    num_groups, per_group = bucket_layout(num_live, group_size, multiple)
    return num_groups * per_group


def estimate_group_size(train_step: Callable, state: trial.TrainState, example_shape: tuple,
                        batch_size: int, memory_bytes: int, num_trials: int) -> int:
    """How many trials fit in `memory_bytes` at `batch_size`, from XLA's own temp-memory figures.

    Compiles one single-trial step at batch sizes 64 and 128; the difference gives the bytes per
    example, which scale with trials x batch under vmap. (At 8 and 16 a GPU's fixed scratch space
    hides the difference: measured equal temp sizes on an H200.)
    """
    def temp_bytes(batch):
        images = jax.ShapeDtypeStruct((batch,) + tuple(example_shape), jnp.float32)
        labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
        analysis = jax.jit(train_step).lower(state, (images, labels)).compile().memory_analysis()
        return None if analysis is None else analysis.temp_size_in_bytes
    small, large = temp_bytes(64), temp_bytes(128)
    if small is None or large is None:
        return num_trials  # the backend gives no estimate: do not split
    per_example = max((large - small) / 64, 1.0)
    params_bytes = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state))
    per_trial = per_example * batch_size + 4 * params_bytes  # + state, gradients, update
    return int(max(1, min(num_trials, memory_bytes // per_trial)))


def default_memory_bytes(fraction: float = 0.5) -> int:
    """Working memory for one cell: `fraction` of the first device's limit (host RAM on CPU)."""
    device = jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
    if stats and 'bytes_limit' in stats:
        return int(stats['bytes_limit'] * fraction)
    try:
        return int(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') * fraction)
    except (ValueError, OSError, AttributeError):
        return int((16 << 30) * fraction)


def _save_ended(saved: dict, slot_trial: np.ndarray, status: np.ndarray | None, states: Any) -> None:
    """Copies to the host the state of every slot's trial that has ended (all trials if status is None)."""
    for slot, index in enumerate(slot_trial):
        index = int(index)
        if index >= 0 and index not in saved and (status is None or status[index] != RUNNING):
            saved[index] = parallel.to_host(jax.tree.map(lambda leaf: leaf[slot], states))


class Programs(NamedTuple):
    train_chunk: Callable   # (states, active, order, images, labels) -> (states, order, finite, previous)
    evaluate: Callable      # (params, mask, images, labels) -> error counts (slots,)


@functools.lru_cache(maxsize=32)
def cell_programs(train_step, val_error, batch_size: int, check_every: int,
                  per_trial_order: bool, mesh: Any = None) -> Programs:
    """The jitted, vmapped chunk and evaluation of a cell; jit compiles one program per slot count.

    Cached on its arguments, so the cells of a study that share a batch size (every sparsity)
    compile once. With a mesh whose 'data' axis has several devices, each batch is sharded
    over them (XLA all-reduces the gradient); the trial axis follows the inputs' sharding.
    """
    batched_step = jax.vmap(train_step, in_axes=(0, 0 if per_trial_order else None))
    if parallel.data_count(mesh) > 1:
        spec = jax.sharding.PartitionSpec(*((parallel.TRIAL,) if per_trial_order else ()), parallel.DATA)
        shard_batch = lambda batch: jax.lax.with_sharding_constraint(
            batch, jax.sharding.NamedSharding(mesh, spec))
    else:
        shard_batch = lambda batch: batch

    def train_chunk(states, active, order, train_images, train_labels):
        def body(carry, _):
            states, order, finite, _ = carry
            previous = states.params
            order, batch = trial.next_batch(order, train_images, train_labels, batch_size, per_trial_order)
            stepped, metrics = batched_step(states, shard_batch(batch))
            # Ended trials keep their state, so what a trial ends with does not depend on the others.
            states = jax.tree.map(
                lambda new, old: jnp.where(active.reshape((-1,) + (1,) * (new.ndim - 1)), new, old),
                stepped, states)
            finite = finite & jnp.isfinite(metrics.loss)
            return (states, order, finite, previous), None

        # The parameters before the chunk's last step come out too, for the smoothness estimate;
        # they are always carried so that the training program is the same with it on or off.
        finite = jnp.ones(active.shape, bool)
        (states, order, finite, previous), _ = jax.lax.scan(
            body, (states, order, finite, states.params), None, length=check_every)
        # The losses are taken before each update, so a step that breaks the weights at the end
        # of the chunk shows only in the weights themselves.
        return states, order, finite & jax.vmap(trial.all_finite)(states.params), previous

    evaluate = jax.vmap(val_error, in_axes=(0, 0, None, None))
    # Donating the trial states halves their memory on accelerators; XLA:CPU cannot use it.
    donate = () if jax.default_backend() == 'cpu' else (0,)
    return Programs(jax.jit(train_chunk, donate_argnums=donate), jax.jit(evaluate))


def _cell_identity(num_trials, batch_size, goal_error, max_steps, check_every, data_seed, until, compaction,
                   per_trial_order, mesh, measurements) -> dict:
    """What a checkpoint must match to continue this cell (JSON). Not the group size: a restored
    cell is re-laid out into this run's groups, which changes no trial's numbers."""
    return {'num_trials': num_trials, 'batch_size': batch_size, 'goal_error': goal_error, 'max_steps': max_steps,
            'check_every': check_every, 'data_seed': data_seed, 'until': until, 'compaction': compaction,
            'per_trial_order': per_trial_order,
            # Checkpoints of the earlier stream (epochs cut into full batches) hold another data order.
            'batch_stream': 'endless',
            'mesh': None if mesh is None else dict(mesh.shape),
            'measurements': None if measurements is None else {
                name: value for name, value in measurements._asdict().items() if name != 'example_losses'}}


def _float_list(values: np.ndarray) -> list:
    """JSON floats; inf and nan as strings, which float() reads back."""
    return [float(v) if np.isfinite(v) else str(float(v)) for v in values]


def run_cell(trials: trial.TrainState, *, train_step: Callable, val_error: Callable,
             train_images: jax.Array, train_labels: jax.Array, val_images: jax.Array,
             val_labels: jax.Array, batch_size: int, goal_error: float, max_steps: int,
             check_every: int, data_seed: int = 0, until: str = 'first', compaction: bool = True,
             group_size: int | None = None, per_trial_order: bool = False,
             keep_final_state: bool = False, measurements: smoothness.Measurements | None = None,
             mesh: Any = None, checkpoints: Any = None,
             log: Callable[[str], None] | None = None, log_every_seconds: float = 10.0) -> CellResult:
    """Trains the N stacked `trials` of one cell and returns each trial's steps-to-result.

    val_error(params, mask, images, labels) is one trial's validation result: an integer error
    count over the split (trial.make_val_error_count; the goal is decided as the reference does)
    or a float error value compared with goal_error directly.

    until='first' ends at the first check where any trial reaches the goal (that step is the
    minimum over trials, as they run in lockstep); 'all' runs every trial to its own end.
    group_size caps the trials on the device at once (None: all); per_trial_order gives trial i
    the data seed data_seed + i instead of one shared order. `measurements` adds the smoothness
    and noise-scale series of every live trial (on copies: trajectories do not change).
    With a `mesh` (parallel.make_mesh) the slots of each group are sharded over its 'trial' axis
    (padded to a multiple of it with inert copies that never count) and batches over its 'data'
    axis. `checkpoints` (checkpoints.CellCheckpoints) saves the whole cell every few checks and
    resumes from the newest intact checkpoint; the result is the same as an uninterrupted run.
    """
    if until not in UNTIL:
        raise ValueError(f'until must be one of {", ".join(UNTIL)}, got {until!r}')
    if max_steps % check_every:
        raise ValueError(f'max_steps={max_steps} must be a multiple of check_every={check_every}')
    if batch_size > train_images.shape[0]:
        raise ValueError(f'batch_size={batch_size} is larger than the training split ({train_images.shape[0]})')
    if checkpoints is not None and keep_final_state:
        raise ValueError('keep_final_state cannot be combined with checkpoints')
    if batch_size % parallel.data_count(mesh):
        raise ValueError(f'batch_size={batch_size} is not divisible by the {parallel.data_count(mesh)} devices '
                         f"of the mesh's 'data' axis")
    started = time.perf_counter()
    num_trials = int(jax.tree.leaves(trials)[0].shape[0])
    group_size = num_trials if group_size is None else max(1, min(group_size, num_trials))
    multiple = parallel.trial_count(mesh)
    programs = cell_programs(train_step, val_error, batch_size, check_every, per_trial_order, mesh)
    measuring = measurements is not None and measurements.active
    if measuring:
        smoothness.validate_measurements(measurements, check_every, int(train_images.shape[0]))
        measure = smoothness.measurement_programs(measurements)
    train_images, train_labels, val_images, val_labels = parallel.place_replicated(
        (train_images, train_labels, val_images, val_labels), mesh)
    if measuring:
        lipschitz_examples = measurements.lipschitz_examples or int(train_images.shape[0])
        lipschitz_images, lipschitz_labels = train_images[:lipschitz_examples], train_labels[:lipschitz_examples]

    status = np.full(num_trials, RUNNING)
    steps_to_result = np.full(num_trials, -1)
    best_val_error = np.full(num_trials, np.inf)
    last_val_error = np.full(num_trials, np.nan)
    steps = np.zeros(num_trials, dtype=np.int64)
    final_states: dict[int, Any] = {}
    lipschitz_series: list[list] = [[] for _ in range(num_trials)]
    noise_scale_series: list[list] = [[] for _ in range(num_trials)]

    num_examples, num_val_examples = int(train_images.shape[0]), int(val_images.shape[0])
    shared_order = None
    if per_trial_order:
        orders = stack_trees([trial.init_data_order(data_seed + i, num_examples, batch_size=batch_size)
                             for i in range(num_trials)])
    else:
        shared_order = parallel.place_replicated(
            trial.init_data_order(data_seed, num_examples, batch_size=batch_size), mesh)

    # Slots: padded to whole groups with copies of trial 0 that never count (slot_trial = -1).
    def layout(trial_indices: np.ndarray, source: Any, source_slot_of: dict[int, int]):
        num_groups, per_group = bucket_layout(len(trial_indices), group_size, multiple)
        size = num_groups * per_group
        slot_trial = np.full(size, -1)
        slot_trial[:len(trial_indices)] = trial_indices
        rows = np.array([source_slot_of[int(t)] for t in trial_indices] +
                        [source_slot_of[int(trial_indices[0])]] * (size - len(trial_indices)))
        taken = tree_take(source, rows)
        groups = [parallel.place_trials(jax.tree.map(lambda leaf: leaf[g:g + per_group], taken), mesh)
                  for g in range(0, size, per_group)]
        return slot_trial, groups

    def states_of(group):
        return group[0] if per_trial_order else group

    def record(pending: list, live_slots: np.ndarray, at_step: int) -> None:
        """Appends this check's measurements (one host read with the check's) to the live trials' series."""
        lipschitz, noise_scale = parallel.to_host(pending)
        if lipschitz is not None:
            values = np.concatenate([estimate.lipschitz for estimate in lipschitz])
            for slot in live_slots:
                lipschitz_series[slot_trial[slot]].append((at_step, float(values[slot])))
        if noise_scale is not None:
            columns = [np.concatenate([getattr(estimate, field) for estimate in noise_scale])
                       for field in ('b_simple', 'gradient_norm_squared', 'trace_covariance')]
            for slot in live_slots:
                noise_scale_series[slot_trial[slot]].append((at_step,) + tuple(float(c[slot]) for c in columns))

    step, checks, computed, needed, elapsed_before = 0, 0, 0, 0, 0.0
    restored = None
    if checkpoints is not None:
        checkpoints.require({'engine': _cell_identity(
            num_trials, batch_size, goal_error, max_steps, check_every, data_seed, until, compaction,
            per_trial_order, mesh, measurements if measuring else None)})
        template = jax.tree.map(lambda leaf: leaf[0], (trials, orders) if per_trial_order else trials)
        sharding = parallel.trial_sharding(mesh) if mesh is not None else None

        def abstract_arrays(host):
            group = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(
                (host['per_group'],) + leaf.shape, leaf.dtype, sharding=sharding or leaf.sharding), template)
            order = None if per_trial_order else jax.tree.map(
                lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding), shared_order)
            return {'groups': [group] * host['num_groups'], 'shared_order': order}

        restored = checkpoints.restore(abstract_arrays)
    if restored is not None:
        arrays, host = restored
        groups, shared_order = list(arrays['groups']), arrays['shared_order']
        slot_trial = np.asarray(host['slot_trial'], dtype=np.int64)
        step, checks, computed, needed = host['step'], host['checks'], host['computed'], host['needed']
        elapsed_before = host['elapsed_seconds']
        status[:] = host['status']
        steps_to_result[:] = host['steps_to_result']
        best_val_error[:] = [float(v) for v in host['best_val_error']]
        last_val_error[:] = [float(v) for v in host['last_val_error']]
        steps[:] = host['steps']
        lipschitz_series = [[(s, float(v)) for s, v in series] for series in host['lipschitz']]
        noise_scale_series = [[(row[0],) + tuple(float(v) for v in row[1:]) for row in series]
                              for series in host['noise_scale']]
        kept = slot_trial[slot_trial >= 0]
        if bucket_layout(len(kept), group_size, multiple) != (len(groups), len(slot_trial) // len(groups)):
            # Saved with another group size (trials_per_group, or memory on another machine).
            flat = tree_concatenate(groups)
            slot_trial, groups = layout(kept, flat, {int(t): s for s, t in enumerate(slot_trial) if t >= 0})
        if log is not None:
            log(f'  resumed from checkpoint at step {step} ({checks} checks)')
    else:
        slot_trial, groups = layout(np.arange(num_trials), (trials, orders) if per_trial_order else trials,
                                    {i: i for i in range(num_trials)})
        if measuring and measurements.noise_scale_every:
            key = measurements.noise_scale_key(0)
            record([None, [measure.noise_scale(states_of(group).params, states_of(group).mask, train_images,
                                               train_labels, key) for group in groups]],
                   np.flatnonzero(slot_trial >= 0), 0)
    started -= elapsed_before
    last_log = time.perf_counter()

    while step < max_steps and (status == RUNNING).any():
        per_group = len(slot_trial) // len(groups)
        errors, finite = [], []
        next_step = step + check_every
        measure_lipschitz = measuring and measurements.lipschitz_every and next_step % measurements.lipschitz_every == 0
        measure_noise = measuring and measurements.noise_scale_every and next_step % measurements.noise_scale_every == 0
        lipschitz, noise_scale = ([] if measure_lipschitz else None), ([] if measure_noise else None)
        for g, group in enumerate(groups):
            group_trials = slot_trial[g * per_group:(g + 1) * per_group]
            # numpy, not a device array: jit treats it as replicated, on one host or several.
            active = (group_trials >= 0) & (status[np.maximum(group_trials, 0)] == RUNNING)
            states, order = group if per_trial_order else (group, shared_order)
            states, next_order, group_finite, previous = programs.train_chunk(
                states, active, order, train_images, train_labels)
            group_errors = programs.evaluate(states.params, states.mask, val_images, val_labels)
            if measure_lipschitz:
                lipschitz.append(measure.lipschitz(previous, states.params, states.mask, lipschitz_images,
                                                   lipschitz_labels))
            if measure_noise:
                noise_scale.append(measure.noise_scale(states.params, states.mask, train_images, train_labels,
                                                       measurements.noise_scale_key(next_step)))
            groups[g] = (states, next_order) if per_trial_order else states
            errors.append(group_errors)
            finite.append(group_finite)
        if not per_trial_order:
            shared_order = next_order
        step = next_step
        checks += 1
        computed += len(slot_trial) * check_every
        # The one host read per check: an error count and a finiteness flag per slot.
        errors, finite = (np.concatenate(values) for values in parallel.to_host((errors, finite)))
        reached = trial.reached_goal(errors, num_val_examples, goal_error)
        rates = trial.error_rate(errors, num_val_examples)
        live_slots = np.flatnonzero((slot_trial >= 0) & (status[np.maximum(slot_trial, 0)] == RUNNING))
        if measure_lipschitz or measure_noise:
            record([lipschitz, noise_scale], live_slots, step)
        for slot in live_slots:
            index = slot_trial[slot]
            steps[index] = step
            needed += check_every
            last_val_error[index] = rates[slot]
            best_val_error[index] = min(best_val_error[index], rates[slot])
            # The reference's order: the goal first, then a non-finite loss or weights.
            if reached[slot]:
                status[index], steps_to_result[index] = REACHED, step
            elif not finite[slot] or not np.isfinite(rates[slot]):
                status[index] = DIVERGED
            elif step >= max_steps:
                status[index] = EXHAUSTED
        now = time.perf_counter()
        if log is not None and (now - last_log >= log_every_seconds or (status != RUNNING).all()
                                or (until == 'first' and (status == REACHED).any())):
            last_log = now
            log(f'  step {step:>7d}/{max_steps}  live {int((status == RUNNING).sum()):>4d}/{num_trials}'
                f'  reached {int((status == REACHED).sum()):>4d}  diverged {int((status == DIVERGED).sum()):>4d}'
                f'  best val error {np.nanmin(best_val_error):.4f}'
                f'  {computed / (now - started):,.0f} trial-steps/s')
        if until == 'first' and (status == REACHED).any():
            break
        live = np.flatnonzero(status == RUNNING)
        if compaction and len(live) and bucket_size(len(live), group_size, multiple) < len(slot_trial):
            flat = tree_concatenate(groups)
            if keep_final_state:
                _save_ended(final_states, slot_trial, status, flat[0] if per_trial_order else flat)
            slot_of = {int(t): s for s, t in enumerate(slot_trial) if t >= 0}
            slot_trial, groups = layout(live, flat, slot_of)
        if checkpoints is not None and len(live) and step < max_steps and checkpoints.due(checks):
            checkpoints.save(checks, {'groups': groups, 'shared_order': shared_order}, {
                'step': step, 'checks': checks, 'computed': computed, 'needed': needed,
                'elapsed_seconds': time.perf_counter() - started, 'num_groups': len(groups),
                'per_group': len(slot_trial) // len(groups), 'slot_trial': slot_trial.tolist(),
                'status': status.tolist(), 'steps_to_result': steps_to_result.tolist(),
                'best_val_error': _float_list(best_val_error), 'last_val_error': _float_list(last_val_error),
                'steps': steps.tolist(),
                'lipschitz': [[[s, _float_list([v])[0]] for s, v in series] for series in lipschitz_series],
                'noise_scale': [[[row[0]] + _float_list(np.asarray(row[1:])) for row in series]
                                for series in noise_scale_series]})

    if checkpoints is not None:
        checkpoints.close()
    final_state = None
    if keep_final_state:
        flat = tree_concatenate(groups)
        _save_ended(final_states, slot_trial, None, flat[0] if per_trial_order else flat)
        final_state = stack_trees([final_states[i] for i in range(num_trials)])
    return CellResult(status, steps_to_result, best_val_error, last_val_error, steps, computed, needed,
                      checks, time.perf_counter() - started, final_state,
                      tuple(lipschitz_series) if measuring and measurements.lipschitz_every else (),
                      tuple(noise_scale_series) if measuring and measurements.noise_scale_every else ())


def default_trials_at_once(num_trials: int) -> int:
    """How many trials' initializations (SNIP passes over the split) to vectorize at once.

    On XLA:CPU one trial already fills the cores and a vmapped SNIP was 1.5x slower per trial
    (measured: 4 trials on 5,400 examples, 8.7 s vmapped vs 5.9 s one by one); accelerators
    want them all at once.
    """
    return 1 if jax.default_backend() == 'cpu' else num_trials


def init_trials(init_trial: Callable, seeds: Sequence[int], hyperparameters: Mapping[str, Sequence],
                train_images: jax.Array, train_labels: jax.Array, trials_at_once: int | None = None
                ) -> trial.TrainState:
    """N trials stacked on a leading axis: trial i from seeds[i] and hyperparameters[name][i].

    `init_trial` is trial.make_init_trial(...); it runs `trials_at_once` trials vectorized at a
    time (lax.map with a batch size; default from the backend).
    """
    seeds = jnp.asarray(np.asarray(seeds), jnp.int32)
    values = {name: jnp.asarray(np.asarray(column)) for name, column in hyperparameters.items()}
    for name, column in values.items():
        if column.shape != seeds.shape:
            raise ValueError(f'hyperparameter {name!r} has {column.shape[0] if column.ndim else 0} values '
                             f'for {seeds.shape[0]} seeds')
    at_once = trials_at_once or default_trials_at_once(int(seeds.shape[0]))
    return jax.jit(lambda seeds, values, images, labels: jax.lax.map(
        lambda args: init_trial(*args, images, labels), (seeds, values), batch_size=at_once))(
            seeds, values, train_images, train_labels)
