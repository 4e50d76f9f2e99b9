"""The vectorized trial engine: N metaparameter trials of one cell in lockstep on one device.

Every trial is the single-trial pytree of dps_jax.trial with a leading trial axis. Training
runs `check_every` steps per lax.scan (batches gathered on device by index, all trials on the
same batch by default, as in the reference), then one whole-validation-split error count per
trial. The trials are vmapped on accelerators and stepped in turn (lax.map) on XLA:CPU
(trials_stepped_in_turn). The host reads a few numbers per trial once per check, never per step.

Bookkeeping (status, steps-to-result) is host-side numpy keyed by trial index; the device holds
'slots'. Trials that end stop moving (their update is masked out by `active`) and, with
compaction, are dropped into a smaller bucket of slots so they stop costing compute.

The pieces `run_cell` puts together: a CellSpec (the static settings, also the checkpoint
identity); the Ledger (dps_jax.ledger: the per-trial record, one update per check); Slots (which
trial each device slot holds, in groups; `lay_out`, `compacted`); `device_check` (the device
work of one check) queued by `dispatch_check` and read by `read_check` (its one host read and
the ledger's record); Measuring (the smoothness hooks); CellCheckpointer (saves and restores the
whole CellState).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dps_jax import parallel, smoothness, trial
from dps_jax.ledger import DIVERGED, EXHAUSTED, REACHED, RUNNING, STATUSES, Ledger, Rule  # noqa: F401

STATUS_NAMES = STATUSES  # index = status code
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


def train_bytes_per_example(train_step: Callable, state: trial.TrainState, example_shape: tuple) -> float | None:
    """Temporary bytes one example adds to one trial's training step, from XLA's own memory figures
    (None when the backend gives none).

    Compiles one single-trial step at batch sizes 64 and 128; the difference gives the bytes per
    example, which scale with trials x batch under vmap. (At 8 and 16 a GPU's fixed scratch space
    hides the difference: measured equal temp sizes on an H200.) Give it a step that takes the whole
    batch at once (trial.make_train_step(per_pass=trial.WHOLE_BATCH)): a step in passes
    (trial.examples_per_pass, on a CPU) holds one pass's temporaries whatever the batch, so its
    difference would leave them out; the whole batch's figure bounds it from above.
    """
    def temp_bytes(batch):
        images = jax.ShapeDtypeStruct((batch,) + tuple(example_shape), jnp.float32)
        labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
        analysis = jax.jit(train_step).lower(state, (images, labels)).compile().memory_analysis()
        return None if analysis is None else analysis.temp_size_in_bytes
    small, large = temp_bytes(64), temp_bytes(128)
    if small is None or large is None:
        return None
    return max((large - small) / 64, 1.0)


def tree_bytes(tree: Any) -> int:
    """Bytes of every array in a pytree."""
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def estimate_group_size(train_step: Callable, state: trial.TrainState, example_shape: tuple,
                        batch_size: int, memory_bytes: int, num_trials: int,
                        bytes_per_example: float | None = None, in_turn: bool = False,
                        measured_examples: int = 0) -> int:
    """How many trials fit in `memory_bytes` at `batch_size` (train_bytes_per_example, or the
    `bytes_per_example` it already gave; the state, its gradient and update on top). Vmapped, every
    trial's step is in memory at once; stepped in turn (trials_stepped_in_turn), one trial's. The
    smoothness measurements (vmapped either way) push `measured_examples` per trial through a
    forward and backward pass at once (smoothness.Measurements.examples_at_once)."""
    per_example = bytes_per_example or train_bytes_per_example(train_step, state, example_shape)
    if per_example is None:
        return num_trials  # the backend gives no estimate: do not split
    state_bytes = 4 * tree_bytes(state)  # state, gradients, update
    if in_turn:
        fits = (memory_bytes - per_example * batch_size) // state_bytes
    else:
        fits = memory_bytes // (per_example * batch_size + state_bytes)
    if measured_examples:
        fits = min(fits, memory_bytes // (per_example * measured_examples + state_bytes))
    return int(max(1, min(num_trials, fits)))


# The CPU evaluation chunk (eval_chunk_size): validation examples per trial per program. At 48 a check by
# XLA's convolution (config.eval_convolution 'auto') ran 1.4x faster than at 12, by im2col 0.93-1.08x
# (README, "Checks on a CPU").
CPU_EVAL_EXAMPLES = 48


def eval_chunk_size(num_trials: int, num_val_examples: int, backend: str, bytes_per_example: float | None = None,
                    memory_bytes: int | None = None) -> int:
    """Validation examples per evaluation chunk, per trial.

    On CPU, CPU_EVAL_EXAMPLES, whatever the trials (a CPU checks its trials in turn,
    trials_stepped_in_turn): a forward pass moves far more bytes than it computes, and small
    programs keep their working set in cache (benchmarks/engine.py --checks). On an
    accelerator, as many as `memory_bytes` holds for every trial at once (a forward pass needs less
    than the training step's bytes_per_example), up to the whole split, so a check is a few large
    programs rather than hundreds of small ones; without an estimate, 1,600 rows in [25, 1000].
    """
    if backend == 'cpu':
        return CPU_EVAL_EXAMPLES
    if not bytes_per_example or not memory_bytes:
        return int(np.clip(1600 // num_trials, 25, 1000))
    fits = int(memory_bytes // (num_trials * bytes_per_example))
    return int(np.clip(fits, 25, num_val_examples))


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


def trials_stepped_in_turn(mesh: Any = None) -> bool:
    """Whether a chunk steps its trials one after another (lax.map) rather than all at once (vmap):
    on XLA:CPU without a mesh of several devices.

    On a 2-core CPU a vmapped step of many trials works far outside the caches that one trial's
    step fits. Against the same trials' single-trial chunks one after another, the Simple-CNN
    engine ran 0.98-1.37x in turn and 0.74-1.11x vmapped (benchmarks/engine.py, batch 8 / 64 /
    512, N = 1 / 8 / 64, one run each on the same machine, before the step took its batch in
    passes: trial.examples_per_pass), and checks of 4 and 16 trials ran
    1.1-1.2x faster in turn (README, "Performance"). On an accelerator vmap fills the chip; on a
    mesh the trial axis is sharded over devices.
    """
    return jax.default_backend() == 'cpu' and (mesh is None or mesh.size == 1)


def _zeros_like_output(function: Callable, *args) -> Any:
    """Zeros of the shapes and dtypes `function(*args)` returns, without running it."""
    return jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), jax.eval_shape(function, *args))


def stepped_trials(train_step: Callable, per_trial_order: bool, in_turn: bool) -> Callable:
    """(states, batch, active) -> (states, metrics) of stacked trials: train_step vmapped, or mapped
    over the trials in turn (lax.map), where an inactive slot (active False) skips its step and
    comes back unchanged with zero metrics; with per_trial_order each trial takes its own batch
    (leading axis). Vmapped, every slot steps (the engine keeps the inactive ones' old state)."""
    if not in_turn:
        vmapped = jax.vmap(train_step, in_axes=(0, 0 if per_trial_order else None))
        return lambda states, batch, active: vmapped(states, batch)

    def skipped(state, batch):
        return state, _zeros_like_output(train_step, state, batch)[1]

    def one(state, batch, on):
        # Padding slots and ended trials cost nothing in turn (buckets round 100 trials up to 128 slots).
        return jax.lax.cond(on, train_step, skipped, state, batch)

    if per_trial_order:
        return lambda states, batches, active: jax.lax.map(lambda args: one(*args), (states, batches, active))
    return lambda states, batch, active: jax.lax.map(lambda args: one(args[0], batch, args[1]), (states, active))


def evaluated_trials(val_error: Callable, in_turn: bool) -> Callable:
    """(states, active, images, labels) -> error counts (trials,) of stacked trials: val_error
    vmapped, or mapped over the trials in turn (lax.map), where an inactive slot is not evaluated.
    An inactive slot's count is 0 either way (nobody reads it)."""
    if in_turn:
        def one(state, on, images, labels):
            # The count is int32, or a float error value (ledger.reached_goal takes either).
            return jax.lax.cond(on, val_error, functools.partial(_zeros_like_output, val_error),
                                state, images, labels)
        return lambda states, active, images, labels: jax.lax.map(
            lambda args: one(*args, images, labels), (states, active))
    if isinstance(val_error, trial.ValErrorCount):
        # One chunk index for every trial: vmapping the per-trial loop would give a count that may
        # stop a chunk index per trial, and a gather of each trial's own chunk.
        return val_error.stacked
    vmapped = jax.vmap(val_error, in_axes=(0, None, None))
    return lambda states, active, images, labels: jnp.where(active, vmapped(states, images, labels), 0)


class Programs(NamedTuple):
    train_chunk: Callable   # (states, active, order, images, labels) -> (states, order, finite, previous)
    evaluate: Callable      # (states, active, images, labels) -> error counts (slots,), 0 where not active


@functools.lru_cache(maxsize=32)
def cell_programs(train_step, val_error, batch_size: int, check_every: int,
                  per_trial_order: bool, mesh: Any = None, in_turn: bool | None = None) -> Programs:
    """The jitted chunk and evaluation of a cell over stacked trials; jit compiles one program per slot count.

    Cached on its arguments, so the cells of a study that share a batch size (every sparsity)
    compile once. With a mesh whose 'data' axis has several devices, each batch is sharded
    over them (XLA all-reduces the gradient); the trial axis follows the inputs' sharding.
    The chunk steps, and the evaluation checks, the trials by vmap, or one after another
    (in_turn; None: trials_stepped_in_turn, i.e. on XLA:CPU).
    """
    in_turn = trials_stepped_in_turn(mesh) if in_turn is None else in_turn
    batched_step = stepped_trials(train_step, per_trial_order, in_turn)
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
            stepped, metrics = batched_step(states, shard_batch(batch), active)
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
        # The mutable collections too: a BatchNorm variance gone to inf breaks evaluation, not the loss.
        return states, order, finite & jax.vmap(trial.all_finite)((states.params, states.model_state)), previous

    evaluate = evaluated_trials(val_error, in_turn)
    # Donating the trial states halves their memory on accelerators. XLA:CPU honours donation too, but
    # host memory is ample and without it a caller may run the chunk on the same states again.
    donate = () if jax.default_backend() == 'cpu' else (0,)
    return Programs(jax.jit(train_chunk, donate_argnums=donate), jax.jit(evaluate))


@dataclasses.dataclass(frozen=True)
class CellSpec:
    """The static settings of one cell run; all but group_size and dispatch_ahead (which change no
    trial's numbers) are what a checkpoint must match."""
    num_trials: int
    batch_size: int
    goal_error: float
    max_steps: int
    check_every: int
    data_seed: int
    until: str              # one of UNTIL
    compaction: bool
    group_size: int         # most trials on the device at once, in [1, num_trials]
    per_trial_order: bool
    mesh: Any               # jax.sharding.Mesh or None
    measurements: smoothness.Measurements | None  # None when nothing is measured
    dispatch_ahead: bool = False  # queue the next check's device work before reading this one's

    @property
    def slot_multiple(self) -> int:
        """Slots per group are a multiple of this: the devices on the mesh's 'trial' axis."""
        return parallel.trial_count(self.mesh)

    def identity(self) -> dict:
        """The checkpoint identity (JSON). Not the group size: a restored cell is re-laid out into
        this run's groups, which changes no trial's numbers."""
        identity = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                    if field.name not in ('group_size', 'dispatch_ahead')}
        identity['mesh'] = None if self.mesh is None else dict(self.mesh.shape)
        identity['measurements'] = None if self.measurements is None else {
            name: value for name, value in self.measurements._asdict().items() if name != 'example_losses'}
        return identity


class Splits(NamedTuple):
    """A cell's resident data on the device (replicated over a mesh)."""
    train_images: jax.Array
    train_labels: jax.Array
    val_images: jax.Array
    val_labels: jax.Array


# --- Slots: the trials on the device ----------------------------------------------------------

class Group(NamedTuple):
    """One group of slots on the device, each leaf with a leading slot axis."""
    states: trial.TrainState
    orders: trial.DataOrder | None  # the slots' own data streams (per-trial order); None: the shared one


class Slots(NamedTuple):
    """Which trial each device slot holds, and the groups of consecutive slots holding them."""
    trial: np.ndarray  # int64 (num_groups * per_group,): the trial in each slot, -1 for padding
    groups: tuple      # tuple[Group, ...]: one per group of per_group consecutive slots

    @property
    def per_group(self) -> int:
        return len(self.trial) // len(self.groups)

    def running(self, ledger: Ledger) -> np.ndarray:
        """bool (slots,): the slots whose trial is still running (padding never is)."""
        return running_slots(self.trial, ledger)

    def slot_of_trial(self) -> np.ndarray:
        """int (highest trial held + 1,): the slot holding each trial, -1 for none."""
        held = np.flatnonzero(self.trial >= 0)
        slots = np.full(int(self.trial.max()) + 1, -1, np.int64)
        slots[self.trial[held]] = held
        return slots

    def fits(self, spec: CellSpec) -> bool:
        """Whether the groups are the layout `spec` gives the trials held (not another group size's)."""
        return bucket_layout(int((self.trial >= 0).sum()), spec.group_size, spec.slot_multiple) == (
            len(self.groups), self.per_group)


def running_slots(slot_trial: np.ndarray, ledger: Ledger) -> np.ndarray:
    """bool (slots,): which slots of a slot -> trial map (-1: padding) hold a trial still running."""
    return (slot_trial >= 0) & ledger.running[np.maximum(slot_trial, 0)]


def lay_out(trials: np.ndarray, source: Group, source_row: np.ndarray, spec: CellSpec) -> Slots:
    """Slots for `trials` in the fewest groups `spec` allows (bucket_layout), trial t taken from row
    source_row[t] of the stacked `source`; padded to whole groups with copies of the first trial,
    which never count (slot trial -1)."""
    num_groups, per_group = bucket_layout(len(trials), spec.group_size, spec.slot_multiple)
    slot_trial = np.full(num_groups * per_group, -1, np.int64)
    slot_trial[:len(trials)] = trials
    taken = tree_take(source, source_row[np.where(slot_trial >= 0, slot_trial, trials[0])])
    return Slots(slot_trial, tuple(
        parallel.place_trials(jax.tree.map(lambda leaf: leaf[start:start + per_group], taken), spec.mesh)
        for start in range(0, len(slot_trial), per_group)))


def _copy_to_host(saved: dict, slots: Slots, states: trial.TrainState, keep: np.ndarray | None = None) -> None:
    """Adds to `saved` a host copy of every held trial t not in it yet with keep[t] (None: every trial);
    `states` has all the slots' states."""
    for slot, index in enumerate(slots.trial.tolist()):
        if index >= 0 and index not in saved and (keep is None or keep[index]):
            saved[index] = parallel.to_host(jax.tree.map(lambda leaf: leaf[slot], states))


def compacted(slots: Slots, ledger: Ledger, spec: CellSpec, final_states: dict | None) -> Slots:
    """The running trials in a smaller bucket of slots when one fits, else `slots` as they are.

    With `final_states` (keep_final_state), the trials that ended leave their states there first.
    """
    live = np.flatnonzero(ledger.running)
    if not len(live) or bucket_size(len(live), spec.group_size, spec.slot_multiple) >= len(slots.trial):
        return slots
    flat = tree_concatenate(slots.groups)
    if final_states is not None:
        _copy_to_host(final_states, slots, flat.states, ~ledger.running)
    return lay_out(live, flat, slots.slot_of_trial(), spec)


# --- One check ---------------------------------------------------------------------------------

class Readout(NamedTuple):
    """What a check reads to the host, per slot: one group's on the device, every group's on the host."""
    errors: Any       # (slots,): validation error counts (or float error values)
    finite: Any       # bool (slots,): loss and weights finite through the chunk
    lipschitz: Any    # float32 (slots,): L over the chunk's last step; None when not measured
    noise_scale: Any  # (B_simple, |G|^2, tr Sigma), each float32 (slots,); None when not measured


def _concatenated(parts: Sequence[Any]) -> Any:
    """One pytree of numpy arrays from per-group ones, joined along the slot axis."""
    return jax.tree.map(lambda *leaves: np.concatenate(leaves), *parts)


class Measuring(NamedTuple):
    """A cell's smoothness measurements: when they run, the programs, and the data they use.

    They run on the states a chunk produced, after it (copies: trajectories do not change).
    """
    measurements: smoothness.Measurements | None  # None: nothing is measured
    programs: smoothness.MeasurementPrograms | None
    train: tuple = ()            # (images, labels): the split the noise scale draws batches from
    lipschitz_split: tuple = ()  # (images, labels): the examples of L's whole-split gradient

    @classmethod
    def of(cls, measurements: smoothness.Measurements | None, data: Splits) -> Measuring:
        if measurements is None:
            return cls(None, None)
        examples = measurements.lipschitz_examples or int(data.train_images.shape[0])
        return cls(measurements, smoothness.measurement_programs(measurements),
                   (data.train_images, data.train_labels),
                   (data.train_images[:examples], data.train_labels[:examples]))

    def due(self, step: int) -> tuple[bool, bool]:
        """Whether L and the noise scale are measured at the check of `step`."""
        every = (0, 0) if self.measurements is None else (
            self.measurements.lipschitz_every, self.measurements.noise_scale_every)
        return tuple(bool(interval) and step % interval == 0 for interval in every)

    def of_group(self, previous: Any, states: trial.TrainState, step: int) -> tuple:
        """(L, noise scale) of one group's slots at the check of `step` (device arrays; None if not due).

        previous: the parameters before the chunk's last step.
        """
        lipschitz_due, noise_due = self.due(step)
        lipschitz = self.programs.lipschitz(previous, states.params, states.mask,
                                            *self.lipschitz_split).lipschitz if lipschitz_due else None
        return lipschitz, self._noise_scale(states, step) if noise_due else None

    def _noise_scale(self, states: trial.TrainState, step: int) -> tuple:
        estimate = self.programs.noise_scale(states.params, states.mask, *self.train,
                                             self.measurements.noise_scale_key(step))
        return estimate.b_simple, estimate.gradient_norm_squared, estimate.trace_covariance

    def recorded(self, ledger: Ledger, trials: np.ndarray, step: int, readout: Readout) -> Ledger:
        """The ledger with the measurements of `readout` (host rows of `trials`) in their series."""
        return ledger.with_measurements(
            trials, step, readout.lipschitz,
            None if readout.noise_scale is None else np.stack(readout.noise_scale, axis=1))

    def at_start(self, ledger: Ledger, slots: Slots) -> Ledger:
        """The ledger with every held trial's noise scale at step 0 (one host read, before training)."""
        if self.measurements is None or not self.measurements.noise_scale_every:
            return ledger
        columns = _concatenated(parallel.to_host([self._noise_scale(group.states, 0) for group in slots.groups]))
        held = slots.trial >= 0
        return ledger.with_measurements(slots.trial[held], 0, noise_scale=np.stack(columns, axis=1)[held])


class CellState(NamedTuple):
    """Everything a cell carries from one check to the next; a checkpoint holds this (and the seconds run)."""
    ledger: Ledger
    slots: Slots
    shared_order: Any  # the data order every trial follows (replicated); None with per-trial orders
    step: int          # steps every running trial has trained
    checks: int
    computed: int      # slot-steps of the programs run, ended trials and padding in slots included (in turn
                       # on a CPU those slots skip their steps: stepped_trials)


def device_check(programs: Programs, measuring: Measuring, data: Splits, slots: Slots,
                       shared_order: Any, active: np.ndarray, step: int) -> tuple[Slots, Any, list[Readout]]:
    """The device work of the check at `step`: every group trains one chunk (the `active` (slots,)
    slots move) and is evaluated and measured. Returns the slots, the shared order and a Readout of
    device arrays per group; nothing is read to the host."""
    groups, readouts, order = [], [], shared_order
    # numpy `active`, not a device array: jit treats it as replicated, on one host or several.
    for group, group_active in zip(slots.groups, np.split(active, len(slots.groups))):
        order = shared_order if group.orders is None else group.orders
        states, order, finite, previous = programs.train_chunk(
            group.states, group_active, order, data.train_images, data.train_labels)
        errors = programs.evaluate(states, group_active, data.val_images, data.val_labels)
        groups.append(Group(states, None if group.orders is None else order))
        readouts.append(Readout(errors, finite, *measuring.of_group(previous, states, step)))
    # Every group advances the shared order alike: the last group's is the next one.
    return slots._replace(groups=tuple(groups)), None if shared_order is None else order, readouts


class InFlight(NamedTuple):
    """A check whose device work is queued and whose numbers the host has not read yet."""
    step: int
    slot_trial: np.ndarray  # the trial in each slot it ran on (the layout when it was dispatched)
    readouts: list          # a Readout of device arrays per group


def dispatch_check(cell: CellState, programs: Programs, measuring: Measuring, data: Splits, spec: CellSpec,
                   step: int) -> tuple[CellState, InFlight]:
    """Queues the device work of the check at `step` for the trials the ledger has running now.

    The cell that comes back holds the slots and shared order after it; its ledger, step and
    checks are still those of the last check read (read_check records this one).
    """
    live = cell.slots.running(cell.ledger)
    slots, shared_order, readouts = device_check(
        programs, measuring, data, cell.slots, cell.shared_order, live, step)
    return (cell._replace(slots=slots, shared_order=shared_order,
                          computed=cell.computed + len(slots.trial) * spec.check_every),
            InFlight(step, cell.slots.trial, readouts))


def read_check(cell: CellState, flight: InFlight, measuring: Measuring, rule: Rule) -> CellState:
    """The ONE host read of a dispatched check (errors, finiteness flags, measurements of every
    slot) and the ledger's record of it. Slots whose trial ended before this check (it was
    dispatched ahead of their ending) are left out: that work is discarded."""
    running = running_slots(flight.slot_trial, cell.ledger)
    seen = jax.tree.map(lambda values: values[running], _concatenated(parallel.to_host(flight.readouts)))
    trials = flight.slot_trial[running]
    ledger = cell.ledger.after_check(trials, seen.errors, seen.finite, flight.step, rule)
    ledger = measuring.recorded(ledger, trials, flight.step, seen)
    return cell._replace(ledger=ledger, step=flight.step, checks=cell.checks + 1)


# --- Checkpoints of the whole cell ------------------------------------------------------------

class CellCheckpointer:
    """Saves and restores a whole CellState through checkpoints.CellCheckpoints (the one schema)."""

    def __init__(self, checkpoints: Any, spec: CellSpec):
        self.checkpoints, self.spec = checkpoints, spec
        checkpoints.require({'engine': spec.identity()})

    def due(self, cell: CellState) -> bool:
        """Whether to save after this check (never once the cell has nothing left to run)."""
        return bool(cell.ledger.running.any()) and cell.step < self.spec.max_steps and self.checkpoints.due(cell.checks)

    def due_after_next(self, cell: CellState) -> bool:
        """Whether the check after the one in flight is a checkpoint's (none is then queued ahead of it)."""
        return self.checkpoints.due(cell.checks + 1)

    def save(self, cell: CellState, elapsed_seconds: float) -> None:
        self.checkpoints.save(cell.checks, {'groups': list(cell.slots.groups), 'shared_order': cell.shared_order}, {
            'step': cell.step, 'checks': cell.checks, 'computed': cell.computed, 'elapsed_seconds': elapsed_seconds,
            'slot_trial': cell.slots.trial.tolist(), 'num_groups': len(cell.slots.groups),
            'ledger': cell.ledger.to_json()})

    def restore(self, stacked: Group, shared_order: Any) -> tuple[CellState, float] | None:
        """(cell, seconds it had run) from the newest intact checkpoint, or None.

        stacked: the cell's trials (and orders) as given, for the per-trial shapes of the groups;
        shared_order: a fresh shared order, for its shapes. A cell saved with another group size
        is re-laid out into this run's groups.
        """
        sharding = None if self.spec.mesh is None else parallel.trial_sharding(self.spec.mesh)

        def abstract_arrays(host):
            per_group = len(host['slot_trial']) // host['num_groups']
            group = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(
                (per_group,) + leaf.shape[1:], leaf.dtype, sharding=sharding or leaf.sharding), stacked)
            order = jax.tree.map(
                lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding), shared_order)
            return {'groups': [group] * host['num_groups'], 'shared_order': order}

        restored = self.checkpoints.restore(abstract_arrays)
        if restored is None:
            return None
        arrays, host = restored
        slots = Slots(np.asarray(host['slot_trial'], np.int64), tuple(arrays['groups']))
        if not slots.fits(self.spec):  # saved with another group size (trials_per_group, another machine)
            slots = lay_out(slots.trial[slots.trial >= 0], tree_concatenate(slots.groups), slots.slot_of_trial(),
                            self.spec)
        return CellState(Ledger.from_json(host['ledger']), slots, arrays['shared_order'], host['step'],
                         host['checks'], host['computed']), host['elapsed_seconds']

    def close(self) -> None:
        self.checkpoints.close()


class _Progress:
    """A progress line every `every_seconds`, and at the check that ends the cell."""

    def __init__(self, log: Callable[[str], None] | None, every_seconds: float, max_steps: int, started: float,
                 bounds: bool = False):
        self.log, self.every_seconds, self.max_steps, self.started = log, every_seconds, max_steps, started
        self.bounds = bounds  # errors above the goal may be lower bounds (trial.errors_may_be_bounds)
        self.last = time.perf_counter()

    def after_check(self, cell: CellState, ending: bool) -> None:
        now = time.perf_counter()
        if self.log is None or not (ending or now - self.last >= self.every_seconds):
            return
        self.last = now
        status = cell.ledger.status
        at_least = '>= ' if self.bounds and not (status == REACHED).any() else ''
        self.log(f'  step {cell.step:>7d}/{self.max_steps}  live {int((status == RUNNING).sum()):>4d}/{len(status)}'
                 f'  reached {int((status == REACHED).sum()):>4d}  diverged {int((status == DIVERGED).sum()):>4d}'
                 f'  best val error {at_least}{np.nanmin(cell.ledger.best_val_error):.4f}'
                 f'  {cell.computed / (now - self.started):,.0f} trial-steps/s')


def run_cell(trials: trial.TrainState, *, train_step: Callable, val_error: Callable,
             train_images: jax.Array, train_labels: jax.Array, val_images: jax.Array,
             val_labels: jax.Array, batch_size: int, goal_error: float, max_steps: int,
             check_every: int, data_seed: int = 0, until: str = 'first', compaction: bool = True,
             group_size: int | None = None, per_trial_order: bool = False,
             keep_final_state: bool = False, measurements: smoothness.Measurements | None = None,
             mesh: Any = None, checkpoints: Any = None, dispatch_ahead: bool | None = None,
             log: Callable[[str], None] | None = None, log_every_seconds: float = 10.0) -> CellResult:
    """Trains the N stacked `trials` of one cell and returns each trial's steps-to-result.

    val_error(state, images, labels) is one trial's validation result: an integer error
    count over the split (trial.make_val_error_count; the goal is decided as the reference does)
    or a float error value compared with goal_error directly. A trial.ValErrorCount that stops
    counting above the goal (stop_above, which must be goal_error's) decides alike; the errors
    recorded for missed checks are then lower bounds.

    until='first' ends at the first check where any trial reaches the goal (that step is the
    minimum over trials, as they run in lockstep); 'all' runs every trial to its own end.
    group_size caps the trials on the device at once (None: all); per_trial_order gives trial i
    the data seed data_seed + i instead of one shared order. `measurements` adds the smoothness
    and noise-scale series of every live trial (on copies: trajectories do not change).
    With a `mesh` (parallel.make_mesh) the slots of each group are sharded over its 'trial' axis
    (padded to a multiple of it with inert copies that never count) and batches over its 'data'
    axis. `checkpoints` (checkpoints.CellCheckpoints) saves the whole cell every few checks and
    resumes from the newest intact checkpoint; the result is the same as an uninterrupted run.
    dispatch_ahead queues each check's device work before the host reads the previous check, so
    the device does not wait for the host (None: on accelerators, not on CPU, where the host's
    share is negligible and the chunk a trial trains after its end would be pure cost). It changes
    no trial's numbers; it is off while keep_final_state holds ended trials' states, and before a
    checkpoint.
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
    num_trials, num_examples = int(jax.tree.leaves(trials)[0].shape[0]), int(train_images.shape[0])
    if dispatch_ahead is None:
        dispatch_ahead = jax.default_backend() != 'cpu'
    spec = CellSpec(num_trials, batch_size, goal_error, max_steps, check_every, data_seed, until, compaction,
                    num_trials if group_size is None else max(1, min(group_size, num_trials)), per_trial_order,
                    mesh, measurements if measurements is not None and measurements.active else None,
                    dispatch_ahead and not keep_final_state)
    if spec.measurements is not None:
        smoothness.validate_measurements(spec.measurements, check_every, num_examples)
    programs = cell_programs(train_step, val_error, batch_size, check_every, per_trial_order, mesh)
    data = Splits(*parallel.place_replicated((train_images, train_labels, val_images, val_labels), mesh))
    measuring = Measuring.of(spec.measurements, data)
    rule = Rule(goal_error, int(val_images.shape[0]), max_steps)
    trial.require_goal_limit(val_error, rule.num_val_examples, goal_error)
    stacked, shared_order = _with_data_orders(trials, spec, num_examples)

    checkpointer = None if checkpoints is None else CellCheckpointer(checkpoints, spec)
    restored = None if checkpointer is None else checkpointer.restore(stacked, shared_order)
    if restored is not None and log is not None:
        log(f'  resumed from checkpoint at step {restored[0].step} ({restored[0].checks} checks)')
    cell, elapsed_before = restored or (fresh_cell(stacked, shared_order, spec, measuring), 0.0)
    started -= elapsed_before
    progress = _Progress(log, log_every_seconds, max_steps, started, trial.errors_may_be_bounds(val_error))
    final_states = {}

    try:
        flight = None  # the check whose device work is queued and not yet read
        while flight is not None or (cell.step < max_steps and cell.ledger.running.any()):
            if flight is None:
                cell, flight = dispatch_check(cell, programs, measuring, data, spec, cell.step + check_every)
            following = None
            if spec.dispatch_ahead and flight.step < max_steps and not (
                    checkpointer is not None and checkpointer.due_after_next(cell)):
                # The device trains the next chunk while the host reads this check. A trial this check
                # ends trains it in vain; its numbers from it are never read (read_check).
                cell, following = dispatch_check(cell, programs, measuring, data, spec, flight.step + check_every)
            cell, flight = read_check(cell, flight, measuring, rule), following
            first_reached = until == 'first' and bool((cell.ledger.status == REACHED).any())
            ending = first_reached or not cell.ledger.running.any()
            progress.after_check(cell, ending=ending)
            if ending:
                break
            if compaction:
                cell = cell._replace(slots=compacted(cell.slots, cell.ledger, spec,
                                                     final_states if keep_final_state else None))
            if checkpointer is not None and flight is None and checkpointer.due(cell):
                checkpointer.save(cell, time.perf_counter() - started)
        if flight is not None:
            jax.block_until_ready(flight.readouts)  # the discarded work ahead belongs to this cell's wall time
    finally:
        if checkpointer is not None:
            # Also when the loop raises (an out-of-memory error, Ctrl-C in a notebook): a save left
            # running in the background would race with the next run of the cell in this process.
            checkpointer.close()
    if keep_final_state:
        _copy_to_host(final_states, cell.slots, tree_concatenate(cell.slots.groups).states)
    return _cell_result(cell, spec, final_states if keep_final_state else None, time.perf_counter() - started)


def _with_data_orders(trials: trial.TrainState, spec: CellSpec, num_examples: int) -> tuple[Group, Any]:
    """(the trials stacked with their own data orders or None, the shared order or None)."""
    if spec.per_trial_order:
        orders = stack_trees([trial.init_data_order(spec.data_seed + i, num_examples, batch_size=spec.batch_size)
                              for i in range(spec.num_trials)])
        return Group(trials, orders), None
    shared = trial.init_data_order(spec.data_seed, num_examples, batch_size=spec.batch_size)
    return Group(trials, None), parallel.place_replicated(shared, spec.mesh)


def fresh_cell(stacked: Group, shared_order: Any, spec: CellSpec, measuring: Measuring) -> CellState:
    """The cell before its first check: every trial in slots, the noise scale at step 0 measured."""
    everyone = np.arange(spec.num_trials)
    slots = lay_out(everyone, stacked, everyone, spec)
    return CellState(measuring.at_start(Ledger.new(spec.num_trials), slots), slots, shared_order, 0, 0, 0)


def _cell_result(cell: CellState, spec: CellSpec, final_states: dict | None, wall_seconds: float) -> CellResult:
    """The CellResult of a cell that has stopped; final_states: host state per trial (keep_final_state)."""
    ledger, measured = cell.ledger, spec.measurements
    final_state = None if final_states is None else stack_trees([final_states[i] for i in range(spec.num_trials)])
    return CellResult(ledger.status, ledger.steps_to_result, ledger.best_val_error, ledger.last_val_error,
                      ledger.steps, cell.computed,
                      # Trials train in lockstep from step 0 until they end: the steps they needed are their steps.
                      int(ledger.steps.sum()), cell.checks, wall_seconds, final_state,
                      tuple(map(list, ledger.lipschitz)) if measured and measured.lipschitz_every else (),
                      tuple(map(list, ledger.noise_scale)) if measured and measured.noise_scale_every else ())


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
