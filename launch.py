"""Entry point: python launch.py --config=configs/x.py --workdir=DIR [--config.field=value ...]"""

import os
import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file('config', None, 'Path to an ml-collections config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for results.')
flags.DEFINE_enum('distributed', 'auto', ['auto', 'on', 'off'],
                  'jax.distributed.initialize(): auto = when a cluster environment (Slurm, Open MPI, TPU pod, '
                  'JAX_COORDINATOR_ADDRESS) or --coordinator_address is present.')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-host runs outside a cluster manager).')
flags.DEFINE_integer('num_processes', None, 'Processes in a multi-host run (with --coordinator_address).')
flags.DEFINE_integer('process_id', None, 'This process in a multi-host run (with --coordinator_address).')
flags.mark_flags_as_required(['config', 'workdir'])


def parse_flags(argv):
    """absl's flag parsing, with a config file that cannot be read or a bad --config override
    reported in one line, not a traceback."""
    try:
        remaining = flags.FLAGS(argv)
        flags.FLAGS.config.keys()  # a config file that failed to load raises on any attribute access
        return remaining
    except flags.Error as error:
        sys.exit(f'launch.py: error: {error}')
    except OSError as error:
        path = next((arg.split('=', 1)[1] if '=' in arg else after for arg, after in zip(argv[1:], [*argv[2:], ''])
                     if arg == '--config' or arg.startswith('--config=')), '')
        reason = 'no such file' if path and not os.path.exists(path.split(':')[0]) else _one_line(error)
        sys.exit(f'launch.py: error: cannot load --config={path}: {reason}')
    except (AttributeError, KeyError) as error:
        names = [arg.split('=')[0] for arg in argv[1:] if arg.startswith('--config.')]
        sys.exit(f'launch.py: error: no such config field {_one_line(error)}; overrides given: {", ".join(names)}')
    except (TypeError, ValueError) as error:
        sys.exit(f'launch.py: error: bad --config override: {_one_line(error)}')


def _one_line(error: BaseException) -> str:
    """An exception's message on one line: a KeyError's own text, not its repr, and that of an
    exception wrapped as the only argument of another (ml_collections' AttributeError(KeyError))."""
    while len(error.args) == 1 and isinstance(error.args[0], BaseException):
        error = error.args[0]
    text = str(error.args[0] if len(error.args) == 1 else error)
    return '; '.join(' '.join(line.split()) for line in text.splitlines() if line.strip())


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
    # Imported here so that --help answers without loading JAX.
    logging.set_verbosity(logging.WARNING)  # absl's INFO would show JAX's backend probing
    from dps_jax import config as config_lib
    from dps_jax import api, data, parallel, single_trial
    config = flags.FLAGS.config
    signal.signal(signal.SIGINT, stop_at_once)
    # Before any computation: every process of a multi-host run joins; only process 0 writes.
    if parallel.initialize_distributed(flags.FLAGS.distributed, flags.FLAGS.coordinator_address,
                                       flags.FLAGS.num_processes, flags.FLAGS.process_id):
        print(f'process {parallel.jax.process_index()} of {parallel.jax.process_count()}', flush=True)
    try:
        if 'sparsities' in config:  # a study: a grid of cells
            api.run_study(config, flags.FLAGS.workdir, log=lambda line: print(line, flush=True))
        else:  # one trial
            config_lib.validate_trial_config(config)
            single_trial.train_and_evaluate(config, flags.FLAGS.workdir,
                                            log=lambda line: print(line, flush=True))
    except (config_lib.ConfigError, data.DataError) as error:
        sys.exit(f'launch.py: error: {error}')


def stop_at_once(signal_number, frame):
    """Ctrl-C: ends the process at once, as a kill would (every results file is written atomically and
    a study resumes from its last checkpoint). A KeyboardInterrupt can be lost: raised inside a
    callback that swallows exceptions (JAX's garbage-collection callback does), it ends nothing."""
    os.write(2, b'launch.py: interrupted; the same command resumes a study from its last checkpoint\n')
    os._exit(128 + signal_number)


if __name__ == '__main__':
    app.run(main, flags_parser=parse_flags)
