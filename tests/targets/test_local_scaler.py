"""The local scaler's rule (targets.local_scaler.decide), step by step with a made-up clock:
scale out at once past the target, after the scale-out cooldown again; scale in only on a
low that lasted the whole scale-in cooldown."""

from __future__ import annotations

from lmiflow.targets.local_scaler import Policy, ScalerState, decide, desired

POLICY = Policy(min_copies=1, max_copies=3, target_per_copy=2, scale_in_cooldown_s=10,
                scale_out_cooldown_s=4)


def test_desired_is_in_flight_over_target_rounded_up_within_the_range():
    assert [desired(n, POLICY) for n in (0, 1, 2, 3, 4, 5, 6, 9)] == [1, 1, 1, 2, 2, 3, 3, 3]


def test_scale_out_at_once_then_waits_for_the_cooldown():
    s = ScalerState(started=0.0)
    assert decide(s, 1.0, 2, 1, POLICY) == 1    # 2 in flight on 1 copy: at target
    assert decide(s, 2.0, 3, 1, POLICY) == 2    # above: ceil(3 / 2) = 2 now
    assert decide(s, 3.0, 6, 2, POLICY) == 2    # 3 wanted, but 1 s after a scale-out (< 4 s)
    assert decide(s, 6.0, 6, 2, POLICY) == 3    # 4 s later
    assert decide(s, 7.0, 50, 3, POLICY) == 3   # never above max


def test_scale_in_needs_a_low_that_lasts_the_whole_cooldown():
    s = ScalerState(started=0.0)
    assert decide(s, 0.0, 6, 1, POLICY) == 3    # scale out to 3 at t=0
    assert decide(s, 5.0, 0, 3, POLICY) == 3    # quiet for 5 s of 10
    assert decide(s, 9.0, 3, 3, POLICY) == 3    # 2 wanted at t=9
    assert decide(s, 10.0, 0, 3, POLICY) == 2   # 10 s since the scale-out; peak wanted 2
    assert decide(s, 15.0, 0, 2, POLICY) == 2   # 5 s since that scale-in
    assert decide(s, 20.0, 0, 2, POLICY) == 1   # 10 s: down to min


def test_no_scale_in_before_the_scaler_has_watched_a_whole_cooldown():
    s = ScalerState(started=100.0)
    assert decide(s, 105.0, 0, 3, POLICY) == 3
    assert decide(s, 110.0, 0, 3, POLICY) == 1


def test_a_lowered_max_scales_in_at_once():
    s = ScalerState(started=0.0)
    assert decide(s, 1.0, 6, 3, Policy(1, 2, 2, 10, 4)) == 2


def test_no_scale_in_cooldown_scales_in_on_the_first_low():
    s = ScalerState(started=0.0)
    assert decide(s, 1.0, 0, 3, Policy(1, 3, 2, 0, 0)) == 1
