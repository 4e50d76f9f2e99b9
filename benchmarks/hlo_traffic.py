"""Where XLA's 'bytes accessed' of a compiled loop goes, read from its optimized HLO text.

XLA's cost analysis charges each instruction with its operands and result, and a fusion with its
result and each parameter: whole, unless every user of the parameter inside the fusion is a
slice, which is charged the slices only. A fusion that reaches a slice of its operand through a
bitcast, reshape, copy or transpose (for example one of the 25 shifted windows an im2col
backward pass cuts out of the patch gradient) is therefore charged the whole operand, though it
reads only its slice. `breakdown` lists a loop body's instructions by that charge and totals
those fusions twice: as charged, and charged what they move (their result, read and written).
`program_charged` adds the entry and every loop up, to check the parse against XLA's own total.

Not modelled: a fusion that updates its operand in place (dynamic-update-slice) is charged whole
here, where XLA charges the update; `traffic` returns both totals so a difference shows.

XLA has no public per-instruction cost API in JAX, so this parses `compiled.as_text()`: the
format is XLA's and may change between versions (it is a benchmark aid, not used by dps_jax).
"""

from __future__ import annotations

import re
from typing import NamedTuple

ELEMENT_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 'bf16': 2, 'f16': 2, 's16': 2, 'u16': 2, 'f32': 4, 's32': 4,
                 'u32': 4, 'f64': 8, 's64': 8, 'u64': 8, 'c64': 8, 'c128': 16}
ARRAY = re.compile(r'\b(' + '|'.join(ELEMENT_BYTES) + r')\[([0-9,]*)\]')
COMPUTATION = re.compile(r'^(?:ENTRY )?%(\S+) \((.*)\) -> (.*) \{$')
INSTRUCTION = re.compile(r'^\s+(?:ROOT )?%(\S+) = (.*?) ([a-z][a-z0-9\-]*)\((.*?)\)(.*)$')
NAME = re.compile(r'%([\w.\-]+)')
# Instructions that move no data of their own: aliases, bookkeeping, and control flow (whose
# called computations program_charged adds up).
FREE = {'parameter', 'get-tuple-element', 'tuple', 'constant', 'bitcast', 'after-all', 'partition-id',
        'replica-id', 'iota', 'while', 'conditional', 'call'}
SLICING = {'parameter', 'slice', 'bitcast', 'reshape', 'copy', 'transpose'}
CALLED = re.compile(r'\b(?:body|condition|to_apply|true_computation|false_computation)=%([^,\s}]+)'
                    r'|branch_computations=\{([^}]*)\}')


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


class Instruction(NamedTuple):
    name: str
    shape: str
    op: str
    operands: list  # operand names
    rest: str  # attributes after the operand list


class Item(NamedTuple):
    charged: int  # bytes XLA's cost analysis charges this instruction
    read_if_slice: int | None  # for a fusion charged a whole operand it only slices: its result's bytes
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


def instructions(computation: Computation) -> list[Instruction]:
    parsed = []
    for line in computation.lines:
        match = INSTRUCTION.match(line)
        if match:
            name, shape, op, operands, rest = match.groups()
            parsed.append(Instruction(name, shape, op, NAME.findall(operands), rest))
    return parsed


def _fusion_charge(fused: Computation) -> tuple[int, int | None]:
    """(charged bytes, result bytes if it only slices one operand that it is charged whole, else None)."""
    body = instructions(fused)
    charged = array_bytes(fused.result)
    whole_slicer = False
    for parameter in (item for item in body if item.op == 'parameter'):
        users = [item for item in body if parameter.name in item.operands]
        if users and all(user.op == 'slice' or (user.op == 'dynamic-slice' and user.operands[0] == parameter.name)
                         for user in users):
            charged += sum(array_bytes(user.shape) for user in users)
        else:
            charged += array_bytes(parameter.shape)
            whole_slicer = True
    ops = [item.op for item in body]
    only_slices = whole_slicer and ops.count('parameter') == 1 and 'slice' in ops and set(ops) <= SLICING
    return charged, array_bytes(fused.result) if only_slices else None


def items(hlo_text: str, name: str, found: dict | None = None) -> list[Item]:
    """Every data-moving instruction of computation `name`, with its charge."""
    found = computations(hlo_text) if found is None else found
    shapes, result = {}, []
    for instruction in instructions(found[name]):
        shapes[instruction.name] = instruction.shape
        if instruction.op in FREE:
            continue
        callee = re.search(r'calls=%([^,\s]+)', instruction.rest)
        if instruction.op == 'fusion' and callee and callee.group(1) in found:
            charged, read = _fusion_charge(found[callee.group(1)])
            result.append(Item(charged, read, f'fusion -> {instruction.shape.split("{")[0]}'))
            continue
        operand_bytes = sum(array_bytes(shapes.get(operand, '')) for operand in instruction.operands)
        result.append(Item(array_bytes(instruction.shape) + operand_bytes, None,
                           f'{instruction.op} -> {instruction.shape.split("{")[0]}'))
    return result


def _entry(hlo_text: str) -> str:
    match = re.search(r'^ENTRY %(\S+) ', hlo_text, re.MULTILINE)
    if match is None:
        raise ValueError('no ENTRY computation in the HLO text')
    return match.group(1)


def program_charged(hlo_text: str) -> int:
    """Bytes charged by the entry computation and every loop, branch and call it reaches (each
    loop body once, as XLA's cost analysis counts it)."""
    found, seen, pending, total = computations(hlo_text), set(), [_entry(hlo_text)], 0
    while pending:
        name = pending.pop()
        if name in seen or name not in found:
            continue
        seen.add(name)
        total += sum(item.charged for item in items(hlo_text, name, found))
        for instruction in instructions(found[name]):
            if instruction.op in ('while', 'conditional', 'call'):
                for single, listed in CALLED.findall(instruction.rest):
                    pending.extend([single] if single else NAME.findall(listed))
    return total


def loop_body(hlo_text: str, found: dict | None = None) -> str:
    """The name of the body of the while loop that moves the most bytes (a scan's step)."""
    found = computations(hlo_text) if found is None else found
    bodies = set(re.findall(r'\bwhile\(.*?body=%([^,\s]+)', hlo_text))
    if not bodies:
        raise ValueError('the program has no while loop')
    return max(bodies, key=lambda body: sum(item.charged for item in items(hlo_text, body, found)))


def breakdown(hlo_text: str) -> dict:
    """The heaviest loop body's charged bytes, those of its fusions charged a whole operand they
    only slice (as charged, and as moved), and its five heaviest instructions."""
    found = computations(hlo_text)
    body_items = items(hlo_text, loop_body(hlo_text, found), found)
    slicing = [item for item in body_items if item.read_if_slice is not None]
    return {'charged': sum(item.charged for item in body_items),
            'slicing_count': len(slicing),
            'slicing_charged': sum(item.charged for item in slicing),
            'slicing_read': sum(2 * item.read_if_slice for item in slicing),  # read a slice, write it
            'heaviest': sorted(body_items, key=lambda item: -item.charged)[:5]}


def cost_analysis(compiled) -> dict:
    """XLA's cost analysis of a compiled JAX program ('bytes accessed', 'flops'; a loop body counted once)."""
    analysis = compiled.cost_analysis()
    return analysis[0] if isinstance(analysis, list) else analysis


class Traffic(NamedTuple):
    counted: float  # XLA's cost analysis 'bytes accessed'
    parsed: int  # program_charged: the same count, from the HLO text
    moved: float  # counted, with the whole-charged slicing fusions charged what they move
    parts: dict  # breakdown of the heaviest loop body


def traffic(compiled) -> Traffic:
    """The bytes of a compiled program: as XLA counts them, as parsed here, and as moved."""
    text, counted = compiled.as_text(), cost_analysis(compiled)['bytes accessed']
    parts = breakdown(text)
    return Traffic(counted, program_charged(text), counted - parts['slicing_charged'] + parts['slicing_read'], parts)
