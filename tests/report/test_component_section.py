"""The inference component in the report: the cold start comes from the run's own
create_endpoint step, and the section says what it measured (or that nothing ran)."""

from __future__ import annotations

from lmiflow.sizing.packing import ComponentNeed, InstanceShape, pack

from lmiflow.report.components import cold_start, component_lines
from lmiflow.report.model import StepRecord
from lmiflow.run_record import cold_start_s
from lmiflow.targets.components_plan import ComponentPlan, ComponentResources, CopyScaling


def plan(**changes) -> ComponentPlan:
    shape = InstanceShape(instance_type="ml.g5.12xlarge", accelerators=4, memory_mb=196608,
                          cpu_cores=48)
    need = ComponentNeed(name="llama", accelerators=1, memory_mb=15317, cpu_cores=1, copies=2)
    return ComponentPlan(
        name="llama", candidate="llama-ic-22222222", endpoint="shared",
        instance_type="ml.g5.12xlarge",
        resources=ComponentResources(accelerators=1, memory_mb=15317, cpu_cores=1), copies=1,
        scaling=CopyScaling(min_copies=0, max_copies=2, target_per_copy=9, why="test",
                            scale_in_cooldown_s=300, scale_out_cooldown_s=60),
        min_instances=0, max_instances=1, initial_instances=1, packing=pack([need], shape),
        **changes)


def test_cold_start_is_the_create_endpoint_step():
    steps = [StepRecord(name="create_model", status="completed", seconds=3.0),
             StepRecord(name="create_endpoint", status="completed", seconds=412.25),
             StepRecord(name="smoke_test", status="completed", seconds=2.0)]
    assert cold_start_s(steps) == 412.25
    failed = [StepRecord(name="create_endpoint", status="failed", seconds=30.0)]
    assert cold_start_s(failed) is None
    assert cold_start_s([]) is None


def test_report_states_the_cold_start_it_measured():
    assert "about 412 s" in cold_start(plan(cold_start_s=412.25))
    assert "not run yet" in cold_start(plan())


def test_printout_fits_80_columns_and_shows_the_packing():
    lines = component_lines(plan())
    assert all(len(line) <= 80 for line in lines)
    assert "  1  llama x2  2/4  30,634/196,608  2/48" in lines
    assert any("scale to zero: on" in line for line in lines)


def test_a_promotion_left_at_zero_copies_states_the_cold_start():
    """Production scaled to zero after promotion: the outcome says the next request starts
    it and waits the cold start this run measured."""
    from lmiflow.report.model import Promotion
    from lmiflow.report.outcome import outcome
    from tests.report.sample import full_report

    r = full_report()
    r.component = plan(cold_start_s=412.25)
    r.promotion = Promotion(action="component llama updated", previous_config=None,
                            production_smoke_test=None, starts_on_request=True)
    (line,) = outcome(r, None).next_steps
    assert "the next request starts one" in line and "about 412 s" in line
    r.promotion = r.promotion.model_copy(update={"starts_on_request": False})
    assert outcome(r, None).next_steps == []
