"""benchmarks/profile_chunk.py's reading of a profiler trace, against answers worked out by hand."""

import gzip
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks'))
import profile_chunk  # noqa: E402


def _event(ts, dur, name='kernel', process='/device:GPU:0', thread='Stream #14(Compute)'):
    return {'ts': ts, 'dur': dur, 'name': name, 'process': process, 'thread': thread}


def test_busy_time_is_the_length_of_the_union_of_the_intervals():
    # [0, 10) and [5, 12) overlap: 12; [20, 30) holds [22, 25): 10; [40, 41): 1.
    events = [_event(20, 10), _event(0, 10), _event(5, 7), _event(22, 3), _event(40, 1)]
    assert profile_chunk.busy_microseconds(events) == 12 + 10 + 1
    assert profile_chunk.busy_microseconds([]) == 0


def test_a_gpu_trace_is_read_from_its_streams_and_summed_per_kernel_name(tmp_path):
    trace = {'traceEvents': [
        {'ph': 'M', 'name': 'process_name', 'pid': 1, 'args': {'name': '/device:GPU:0'}},
        {'ph': 'M', 'name': 'process_name', 'pid': 2, 'args': {'name': '/host:CPU'}},
        {'ph': 'M', 'name': 'thread_name', 'pid': 1, 'tid': 7, 'args': {'name': 'Stream #7(Compute)'}},
        {'ph': 'M', 'name': 'thread_name', 'pid': 1, 'tid': 9, 'args': {'name': 'XLA Modules'}},
        {'ph': 'X', 'pid': 1, 'tid': 7, 'ts': 0, 'dur': 30, 'name': 'concatenate'},
        {'ph': 'X', 'pid': 1, 'tid': 7, 'ts': 40, 'dur': 20, 'name': 'gemm'},
        {'ph': 'X', 'pid': 1, 'tid': 7, 'ts': 70, 'dur': 30, 'name': 'concatenate'},
        {'ph': 'X', 'pid': 1, 'tid': 9, 'ts': 0, 'dur': 100, 'name': 'jit_train_chunk'},  # spans the kernels
        {'ph': 'X', 'pid': 2, 'tid': 1, 'ts': 0, 'dur': 500, 'name': 'PjitFunction'},
        {'ph': 'i', 'pid': 1, 'tid': 7, 'ts': 5, 'name': 'a marker without a duration'},
    ]}
    folder = tmp_path / 'plugins' / 'profile' / 'run'
    folder.mkdir(parents=True)
    with gzip.open(folder / 'host.trace.json.gz', 'wt') as file:
        json.dump(trace, file)
    events = profile_chunk.trace_events(str(tmp_path))
    assert len(events) == 5
    kernels, on_device = profile_chunk.device_operations(events)
    assert on_device and [event['name'] for event in kernels] == ['concatenate', 'gemm', 'concatenate']
    assert profile_chunk.busy_microseconds(kernels) == 80  # [0, 30), [40, 60), [70, 100)
    assert profile_chunk.operation_totals(kernels) == [('concatenate', 2, 60), ('gemm', 1, 20)]


def test_a_trace_without_device_events_falls_back_to_the_host():
    events = [_event(0, 5, 'ThunkExecutor::Execute', '/host:CPU', 'tf_XLATfrtCpuClient'),
              _event(0, 9, 'python', 'python3', 'main')]
    kernels, on_device = profile_chunk.device_operations(events)
    assert not on_device and [event['name'] for event in kernels] == ['ThunkExecutor::Execute']
