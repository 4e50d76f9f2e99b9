"""Where XLA's 'bytes accessed' of a compiled loop goes, read from its optimized HLO text.

XLA's cost analysis charges each instruction of a loop body with its operands and result, and a
fusion with its parameters and result, whole. A fusion that only slices one operand (for example
one of the 25 shifted windows an im2col backward pass cuts out of the patch gradient) is charged
the whole operand, though it reads only its slice. `breakdown` lists the body's instructions by
their charge and totals those slicing fusions twice: as charged, and charged for the bytes they
read (their result), so the report can say how much of the count is that.

XLA has no public per-instruction cost API in JAX, so this parses `compiled.as_text()`: the
format is XLA's and may change between versions (it is a benchmark aid, not used by dps_jax).
"""

from __future__ import annotations

import re
from typing import NamedTuple

ELEMENT_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 'bf16': 2, 'f16': 2, 's16': 2, 'u16': 2, 'f32': 4, 's32': 4,
                 'u32': 4, 'f64': 8, 's64': 8, 'u64': 8}
ARRAY = re.compile(r'\b(' + '|'.join(ELEMENT_BYTES) + r')\[([0-9,]*)\]')
COMPUTATION = re.compile(r'^(?:ENTRY )?%(\S+) \((.*)\) -> (.*) \{$')
INSTRUCTION = re.compile(r'^\s+(?:ROOT )?%(\S+) = (.*?) ([a-z][a-z0-9\-]*)\((.*?)\)(.*)$')
# Instructions that move no data of their own (aliases and bookkeeping).
FREE = {'parameter', 'get-tuple-element', 'tuple', 'constant', 'bitcast', 'after-all', 'partition-id',
        'replica-id', 'iota'}
SLICING = {'parameter', 'slice', 'bitcast', 'reshape', 'copy', 'transpose'}


def array_bytes(text: str) -> int:
    """Bytes of every array shape written in `text`, e.g. 'f32[8,64]' -> 2048."""
    total = 0
    for element, dims in ARRAY.findall(text):
        count = 1
        for dim in filter(None, dims.split(',')):
            count *= int(dim)
        total += count * ELEMENT_BYTES[element]
    return total


class Computation(NamedTuple):
    parameters: str  # the signature's parameter list, as text
    result: str
    lines: list


class Item(NamedTuple):
    charged: int  # bytes the cost analysis-style count charges this instruction
    read_if_slice: int | None  # for a fusion that only slices one operand: its result's bytes, else None
    text: str  # a short description


def computations(hlo_text: str) -> dict:
    found, current = {}, None
    for line in hlo_text.splitlines():
        match = COMPUTATION.match(line)
        if match:
            current = found[match.group(1)] = Computation(match.group(2), match.group(3), [])
        elif current is not None and line.startswith('  '):
            current.lines.append(line)
    return found


def _only_slices(computation: Computation) -> bool:
    """A fusion body of one parameter and slices, reshapes, copies and transposes of it."""
    ops = [match.group(3) for match in map(INSTRUCTION.match, computation.lines) if match]
    return ops.count('parameter') == 1 and 'slice' in ops and set(ops) <= SLICING


def items(hlo_text: str, body: str) -> list[Item]:
    """Every data-moving instruction of computation `body`, with its charge."""
    found = computations(hlo_text)
    shapes, result = {}, []
    for line in found[body].lines:
        match = INSTRUCTION.match(line)
        if not match:
            continue
        name, shape, op, operands, rest = match.groups()
        shapes[name] = shape
        if op in FREE:
            continue
        callee = re.search(r'calls=%([^,\s]+)', rest)
        if op == 'fusion' and callee and callee.group(1) in found:
            fused = found[callee.group(1)]
            charged = array_bytes(fused.parameters) + array_bytes(fused.result)
            read = array_bytes(fused.result) if _only_slices(fused) else None
            result.append(Item(charged, read, f'fusion -> {fused.result.split("{")[0]}'))
            continue
        operand_bytes = sum(array_bytes(shapes.get(operand.strip().lstrip('%'), ''))
                            for operand in operands.split(','))
        result.append(Item(array_bytes(shape) + operand_bytes, None, f'{op} -> {shape.split("{")[0]}'))
    return result


def loop_body(hlo_text: str) -> str:
    """The name of the body of the while loop that moves the most bytes (a scan's step)."""
    bodies = set(re.findall(r'\bwhile\(.*?body=%([^,\s]+)', hlo_text))
    if not bodies:
        raise ValueError('the program has no while loop')
    return max(bodies, key=lambda body: sum(item.charged for item in items(hlo_text, body)))


def breakdown(hlo_text: str) -> dict:
    """The heaviest loop body's charged bytes, those of its slicing fusions as charged and as read,
    and its five heaviest instructions."""
    body_items = items(hlo_text, loop_body(hlo_text))
    slicing = [item for item in body_items if item.read_if_slice is not None]
    return {'charged': sum(item.charged for item in body_items),
            'slicing_count': len(slicing),
            'slicing_charged': sum(item.charged for item in slicing),
            'slicing_read': sum(2 * item.read_if_slice for item in slicing),  # read a slice, write it
            'heaviest': sorted(body_items, key=lambda item: -item.charged)[:5]}


def cost_analysis_bytes(compiled) -> float:
    """XLA's cost analysis 'bytes accessed' of a compiled JAX program (a loop body counted once)."""
    analysis = compiled.cost_analysis()
    return (analysis[0] if isinstance(analysis, list) else analysis)['bytes accessed']
