"""benchmarks/hlo_traffic.py against byte counts worked out by hand on a small HLO text."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks'))
import hlo_traffic  # noqa: E402

# A loop whose body runs a fusion that slices its operand through a bitcast (charged the whole
# f32[4,256] operand, reads 1/4 of it), a fusion that slices its operand directly (charged only the
# slice, as XLA does), a fusion that adds, and a dot whose second operand follows an index comment
# as XLA prints one before every fifth operand; the condition and the entry are not the body.
HLO = """\
%bitcast_slice (param_0: f32[4,256]) -> f32[1,256] {
  %param_0 = f32[4,256]{1,0} parameter(0)
  %bitcast.1 = f32[4,1,256]{2,1,0} bitcast(%param_0)
  %slice.1 = f32[1,1,256]{2,1,0} slice(%bitcast.1), slice={[2:3], [0:1], [0:256]}
  ROOT %bitcast.2 = f32[1,256]{1,0} bitcast(%slice.1)
}

%direct_slice (param_0.2: f32[4,256]) -> f32[1,256] {
  %param_0.2 = f32[4,256]{1,0} parameter(0)
  ROOT %slice.2 = f32[1,256]{1,0} slice(%param_0.2), slice={[1:2], [0:256]}
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
  %fusion.1 = f32[1,256]{1,0} fusion(%gte.1), kind=kLoop, calls=%bitcast_slice
  %fusion.3 = f32[1,256]{1,0} fusion(%gte.1), kind=kLoop, calls=%direct_slice
  %fusion.2 = f32[1,256]{1,0} fusion(%fusion.1, %fusion.3), kind=kLoop, calls=%adding
  %dot.1 = f32[1,8]{1,0} dot(%fusion.2, /*index=1*/%gte.2), lhs_contracting_dims={1}, rhs_contracting_dims={0}
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
  %gte.4 = f32[4,256]{1,0} get-tuple-element(%while.1), index=1
  ROOT %negate.1 = f32[4,256]{1,0} negate(%gte.4)
}
"""


def test_array_bytes_counts_every_shape_by_its_element_size():
    assert hlo_traffic.array_bytes('f32[8,64]') == 2048
    assert hlo_traffic.array_bytes('(s32[], pred[3,5], bf16[2,2])') == 4 + 15 + 8
    assert hlo_traffic.array_bytes('param_0: f32[4,256], param_1: u8[7]') == 4096 + 7


def test_the_body_is_charged_as_xla_charges_it_and_whole_charged_slices_also_as_they_move():
    assert hlo_traffic.loop_body(HLO) == 'body'
    parts = hlo_traffic.breakdown(HLO)
    # bitcast-then-slice fusion: the whole f32[4,256] operand (4096) + its f32[1,256] result (1024);
    # direct slice: the slice (1024) + result (1024); adding: 3 x 1024; dot: 1024 + 8192 + 32.
    assert parts['charged'] == (4096 + 1024) + (1024 + 1024) + 3 * 1024 + (1024 + 8192 + 32)
    assert parts['slicing_count'] == 1  # the direct slice is already charged only what it reads
    assert parts['slicing_charged'] == 4096 + 1024
    assert parts['slicing_read'] == 2 * 1024  # reads its slice and writes it
    assert [item.text for item in parts['heaviest']] == ['dot -> f32[1,8]', 'fusion -> f32[1,256]',
                                                         'fusion -> f32[1,256]', 'fusion -> f32[1,256]']
    # The entry adds its negate (4096 in, 4096 out); the condition its compare (4 + 4 in, 1 out).
    assert hlo_traffic.program_charged(HLO) == parts['charged'] + 2 * 4096 + 9


def test_the_parsed_program_adds_up_to_xla_s_own_count():
    """On a real compiled scan (slices, a matmul, an elementwise update), as this JAX's XLA prints it."""
    import jax
    import jax.numpy as jnp

    def program(x, w):
        def step(carry, _):
            # Five narrow windows of a wide carry: charging their fusions the whole carry, not the
            # windows, would overcount the program by more than half.
            windows = jnp.concatenate([carry[:, i:i + 60] for i in range(5)], axis=1)
            return carry + jnp.pad(windows @ w, ((0, 0), (0, 1024 - 60))), None
        return jax.lax.scan(step, x, None, length=3)[0]

    compiled = jax.jit(program).lower(jnp.ones((16, 1024)), jnp.ones((300, 60))).compile()
    counted = hlo_traffic.cost_analysis(compiled)['bytes accessed']
    assert abs(hlo_traffic.program_charged(compiled.as_text()) - counted) <= 0.02 * counted
