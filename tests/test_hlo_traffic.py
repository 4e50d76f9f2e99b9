"""benchmarks/hlo_traffic.py against byte counts worked out by hand on a small HLO text."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks'))
import hlo_traffic  # noqa: E402

# A loop whose body runs a slicing fusion (reads 1/4 of a f32[4,256] operand), a fusion that adds,
# and a plain dot; the condition and the entry are not the body.
HLO = """\
%slice_only (param_0: f32[4,256]) -> f32[1,256] {
  %param_0 = f32[4,256]{1,0} parameter(0)
  ROOT %slice.1 = f32[1,256]{1,0} slice(%param_0), slice={[2:3], [0:256]}
}

%adding (param_0.1: f32[1,256], param_1: f32[1,256]) -> f32[1,256] {
  %param_0.1 = f32[1,256]{1,0} parameter(0)
  %param_1 = f32[1,256]{1,0} parameter(1)
  ROOT %add.1 = f32[1,256]{1,0} add(%param_0.1, %param_1)
}

%body (tuple.1: (s32[], f32[4,256], f32[256,8])) -> (s32[], f32[4,256], f32[256,8]) {
  %tuple.1 = (s32[], f32[4,256]{1,0}, f32[256,8]{1,0}) parameter(0)
  %gte.0 = s32[] get-tuple-element(%tuple.1), index=0
  %gte.1 = f32[4,256]{1,0} get-tuple-element(%tuple.1), index=1
  %gte.2 = f32[256,8]{1,0} get-tuple-element(%tuple.1), index=2
  %fusion.1 = f32[1,256]{1,0} fusion(%gte.1), kind=kLoop, calls=%slice_only
  %fusion.2 = f32[1,256]{1,0} fusion(%fusion.1, %fusion.1), kind=kLoop, calls=%adding
  %dot.1 = f32[1,8]{1,0} dot(%fusion.2, %gte.2), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %tuple.2 = (s32[], f32[4,256]{1,0}, f32[256,8]{1,0}) tuple(%gte.0, %gte.1, %gte.2)
}

%condition (tuple.3: (s32[], f32[4,256], f32[256,8])) -> pred[] {
  %tuple.3 = (s32[], f32[4,256]{1,0}, f32[256,8]{1,0}) parameter(0)
  %gte.3 = s32[] get-tuple-element(%tuple.3), index=0
  %constant.1 = s32[] constant(10)
  ROOT %compare.1 = pred[] compare(%gte.3, %constant.1), direction=LT
}

ENTRY %main (p.0: f32[4,256], p.1: f32[256,8]) -> f32[4,256] {
  %p.0 = f32[4,256]{1,0} parameter(0)
  %p.1 = f32[256,8]{1,0} parameter(1)
  %constant.2 = s32[] constant(0)
  %tuple.4 = (s32[], f32[4,256]{1,0}, f32[256,8]{1,0}) tuple(%constant.2, %p.0, %p.1)
  %while.1 = (s32[], f32[4,256]{1,0}, f32[256,8]{1,0}) while(%tuple.4), condition=%condition, body=%body
  ROOT %gte.4 = f32[4,256]{1,0} get-tuple-element(%while.1), index=1
}
"""


def test_array_bytes_counts_every_shape_by_its_element_size():
    assert hlo_traffic.array_bytes('f32[8,64]') == 2048
    assert hlo_traffic.array_bytes('(s32[], pred[3,5], bf16[2,2])') == 4 + 15 + 8
    assert hlo_traffic.array_bytes('param_0: f32[4,256], param_1: u8[7]') == 4096 + 7


def test_the_body_is_charged_as_xla_charges_it_and_slicing_fusions_also_as_they_move():
    assert hlo_traffic.loop_body(HLO) == 'body'
    parts = hlo_traffic.breakdown(HLO)
    # slicing fusion: the whole f32[4,256] operand (4096) + its f32[1,256] result (1024);
    # adding fusion: two f32[1,256] parameters + result (3 x 1024); dot: 1024 + 8192 operands + 32 result.
    assert parts['charged'] == (4096 + 1024) + 3 * 1024 + (1024 + 8192 + 32)
    assert parts['slicing_count'] == 1
    assert parts['slicing_charged'] == 4096 + 1024
    assert parts['slicing_read'] == 2 * 1024  # reads its slice and writes it
    assert [item.text for item in parts['heaviest']] == ['dot -> f32[1,8]', 'fusion -> f32[1,256]',
                                                         'fusion -> f32[1,256]']
