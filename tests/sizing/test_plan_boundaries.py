"""The planner's decisions on a hand-built catalog, at the exact byte where they flip.

Toy model (see test_memory.py): 10 M bf16 parameters (20 MB), 4 layers, 2 KV heads of 32,
vocab 1000. Requests of 900 + 100 tokens at gpu_memory_utilization 1.0, so a GPU's usable
memory is its size. One sequence costs 1000 tokens x 1,024 B of KV + 4,000 B of fp32 logits;
the fixed part is the weights, the CUDA context (512 MiB) and graphs (256 MiB) and one
prefill step of 1000 x concurrency tokens (each 2 x (4 x 256 + 2 x 512) bytes).
"""

import pytest
from lmiflow.sizing.catalog import catalog_with
from lmiflow.sizing.model_spec import ModelSpec
from lmiflow.sizing.planner import PlanRequest, plan

MiB = 2**20
PER_SEQUENCE = 1000 * 1024 + 1000 * 4


def fixed(concurrency: int, weights: int = 20_000_000, mlp_per_gpu: int = 512) -> int:
    prefill = min(8192, 1000 * concurrency) * (4 * 256 + 2 * mlp_per_gpu) * 2
    return weights + 512 * MiB + 256 * MiB + prefill


def exactly(n: int) -> int:
    """GPU bytes that hold exactly n sequences on one unsharded copy."""
    return fixed(n) + n * PER_SEQUENCE


def toy() -> ModelSpec:
    return ModelSpec(model_type="llama", hidden_size=256, num_layers=4, num_attention_heads=8,
                     num_kv_heads=2, head_dim=32, intermediate_size=512, vocab_size=1000,
                     parameters=10_000_000, active_parameters=10_000_000,
                     torch_dtype="bfloat16", max_position_embeddings=4096)


def row(name, gpus, memory, price, accelerator="NVIDIA L4", planned=True):
    return {"instance_type": name, "family": name.split(".")[1], "accelerator": accelerator,
            "accelerator_count": gpus, "memory_per_accelerator_bytes": memory,
            "memory_source": "test", "vcpu": 4, "host_memory_gib": 16,
            "usd_per_hour": price, "price_region": "us-east-1", "price_source": "test",
            "price_date": "2026", "planned": planned,
            "not_planned_reason": "" if planned else "Neuron"}


def request(concurrency=4, **kw):
    return PlanRequest(max_input_tokens=900, max_output_tokens=100, concurrency=concurrency,
                       gpu_memory_utilization=1.0, **kw)


def test_plan_that_holds_exactly_the_workload_fits():
    p = plan(toy(), request(4), catalog_with([row("ml.x.large", 1, exactly(4), 1.0)]))
    o = p.chosen
    assert o is not None and o.fits and o.binding is None
    assert o.max_concurrency == 4 and o.concurrency_per_copy == 4
    assert o.per_gpu_required_bytes == exactly(4) == o.gpu_memory_bytes
    assert o.reason == "fits: 1 model copy of tp 1; holds 4 concurrent requests"


def test_plan_exactly_one_sequence_short_does_not_fit():
    p = plan(toy(), request(4), catalog_with([row("ml.x.large", 1, exactly(4) - 1, 1.0)]))
    o = p.options[0]
    assert p.chosen is None
    assert not o.fits and not o.eligible and o.binding == "kv_cache"
    assert o.max_concurrency == 3  # room for three: the workload needs four
    assert o.reason.startswith("KV cache: room for 3 sequence(s) of 1000 tokens per copy, "
                               "need 4 (")
    assert p.chosen_reason.startswith("no option fits: constraints hit: kv_cache; even "
                                      "ml.x.large fails (KV cache: room for 3")


def test_weights_and_overhead_that_fill_the_gpu_leave_no_room_and_say_which():
    # weights alone too big
    p = plan(toy(), request(1), catalog_with([row("ml.x.large", 1, 20_000_000 - 1, 1.0)]))
    o = p.options[0]
    assert (o.binding, o.max_concurrency) == ("weights", 0)
    assert o.reason == "weights 0.0 GB per GPU > 0.0 GB usable (100% of 0.0 GB)"
    # weights exactly fill the GPU: they fit; the runtime overhead is what does not
    p = plan(toy(), request(1), catalog_with([row("ml.x.large", 1, 20_000_000, 1.0)]))
    assert p.options[0].binding == "overhead"
    # weights fit, CUDA context + graphs + one prefill step do not
    p = plan(toy(), request(1), catalog_with([row("ml.x.large", 1, fixed(1) - 1, 1.0)]))
    o = p.options[0]
    assert (o.binding, o.max_concurrency) == ("overhead", 0)
    assert o.reason == "weights 0.0 GB + runtime overhead 0.8 GB per GPU > 0.8 GB usable"
    # exactly the fixed part: fits the overhead check, then no room for a sequence
    p = plan(toy(), request(1), catalog_with([row("ml.x.large", 1, fixed(1), 1.0)]))
    assert (p.options[0].binding, p.options[0].max_concurrency) == ("kv_cache", 0)


def test_usable_memory_is_the_utilization_share_of_the_gpu():
    mem = 1_000_000_000
    p = plan(toy(), PlanRequest(max_input_tokens=900, max_output_tokens=100, concurrency=1,
                                gpu_memory_utilization=0.5),
             catalog_with([row("ml.x.large", 1, mem, 1.0)]))
    o = p.options[0]
    assert o.usable_bytes_per_gpu == 500_000_000
    assert o.per_gpu == {"weights_bytes": 20_000_000, "kv_cache_bytes": 1000 * 1024,
                         "overhead_bytes": fixed(1) - 20_000_000 + 4000,
                         "usable_bytes": 500_000_000}
    assert o.binding == "overhead"  # 0.8 GB of overhead > 0.5 GB usable


def test_multi_instance_plan_spreads_the_workload_over_instances():
    """Eight requests on two one-GPU instances: four per instance, which fits one GPU that
    holds exactly four; one instance would need eight."""
    cat = catalog_with([row("ml.x.large", 1, exactly(4), 1.5)])
    one = plan(toy(), request(8), cat)
    assert one.chosen is None and one.options[0].concurrency_per_copy == 8
    two = plan(toy(), request(8, instance_count=2), cat)
    o = two.chosen
    assert o is not None and o.instance_count == 2
    assert o.concurrency_per_copy == 4
    assert o.max_concurrency == 8  # 4 per copy x 1 copy x 2 instances
    assert o.usd_per_hour == 3.0  # two instances at $1.50/h
    assert o.reason == ("fits: 1 model copy of tp 1 on each of 2 instances; holds 8 "
                        "concurrent requests (4 per copy)")
    assert two.chosen_reason.endswith("ml.x.large x2 with tp 1 at $3.00/h")
    # the price ceiling applies to all instances together
    capped = plan(toy(), request(8, instance_count=2, max_usd_per_hour=2.9), cat)
    assert capped.chosen is None and capped.options[0].binding == "price"
    assert capped.options[0].reason == (
        "fits: 1 model copy of tp 1 on each of 2 instances; holds 8 concurrent requests "
        "(4 per copy); excluded: $3.00/h over the $2.90/h ceiling")
    assert plan(toy(), request(8, instance_count=2, max_usd_per_hour=3.0), cat).chosen


def test_multi_gpu_instance_holds_a_copy_per_gpu_and_reports_idle_gpus():
    cat = catalog_with([row("ml.x.2xlarge", 2, exactly(4), 2.0),
                        row("ml.x.3xlarge", 3, exactly(4) * 2, 3.0)])
    p = plan(toy(), request(8, allow=["ml.x.2xlarge"], tensor_parallel_degree=1), cat)
    o = p.chosen
    assert (o.model_copies, o.concurrency_per_copy, o.max_concurrency) == (2, 4, 8)
    assert o.reason == ("fits: 2 model copies of tp 1 use all 2 GPUs; holds 8 concurrent "
                        "requests (4 per copy)")
    p = plan(toy(), request(8, allow=["ml.x.3xlarge"], tensor_parallel_degree=2), cat)
    o = p.chosen
    assert (o.model_copies, o.tensor_parallel_degree, o.concurrency_per_copy) == (1, 2, 8)
    assert o.reason.startswith("fits: 1 model copy of tp 2, 1 GPU(s) idle; holds ")


def test_cheapest_eligible_option_is_chosen_and_options_ranked():
    """Hand-built: a $1 instance one sequence too small, $2 and $3 ones that fit, an unpriced
    one that fits and a $0.10 one that is not planned (Neuron)."""
    big, small = exactly(4) * 2, exactly(4) - 1
    cat = catalog_with([row("ml.c.large", 1, big, 3.0), row("ml.a.large", 1, small, 1.0),
                        row("ml.d.large", 1, big, None), row("ml.b.large", 1, big, 2.0),
                        row("ml.n.large", 1, big, 0.1, planned=False)])
    p = plan(toy(), request(4), cat)
    assert p.chosen.instance_type == "ml.b.large"
    assert p.chosen_reason == ("cheapest option that fits the workload: ml.b.large with tp 1 "
                               "at $2.00/h")
    assert [o.instance_type for o in p.options] == ["ml.b.large", "ml.c.large", "ml.d.large",
                                                    "ml.a.large"]
    assert [o.rank for o in p.options] == [1, 2, 3, 4]
    assert p.not_planned == [{"instance_type": "ml.n.large", "reason": "Neuron"}]


def test_ties_on_price_prefer_the_smaller_tp_then_more_headroom():
    cat = catalog_with([row("ml.x.2xlarge", 2, exactly(4) * 2, 2.0),
                        row("ml.y.2xlarge", 2, exactly(4) * 3, 2.0)])
    p = plan(toy(), request(4), cat)
    assert [(o.instance_type, o.tensor_parallel_degree) for o in p.options] == [
        ("ml.y.2xlarge", 1), ("ml.x.2xlarge", 1), ("ml.y.2xlarge", 2), ("ml.x.2xlarge", 2)]


def test_only_priced_options_fit_none_under_the_ceiling():
    cat = catalog_with([row("ml.b.large", 1, exactly(4), 2.0), row("ml.d.large", 1, exactly(4),
                                                                    None)])
    p = plan(toy(), request(4, max_usd_per_hour=1.0), cat)
    assert p.chosen is None
    assert {o.instance_type: o.reason.rsplit("; ", 1)[1] for o in p.options} == {
        "ml.b.large": "excluded: $2.00/h over the $1.00/h ceiling",
        "ml.d.large": "excluded: no known price under a price ceiling"}
    assert p.chosen_reason == ("2 option(s) fit in memory but none meets the price ceiling "
                               "$1.0/h; the cheapest fitting is ml.b.large (tp 1): fits: 1 "
                               "model copy of tp 1; holds 4 concurrent requests; excluded: "
                               "$2.00/h over the $1.00/h ceiling")


def test_unpriced_option_is_chosen_only_when_nothing_priced_fits():
    cat = catalog_with([row("ml.d.large", 1, exactly(4), None),
                        row("ml.a.large", 1, exactly(4) - 1, 1.0)])
    p = plan(toy(), request(4), cat)
    assert p.chosen.instance_type == "ml.d.large" and p.chosen.usd_per_hour is None
    assert p.chosen_reason == ("cheapest option that fits the workload: ml.d.large with tp 1 "
                               "(no known price; no priced option fits)")


def test_no_instance_matches_the_constraints_names_them():
    cat = catalog_with([row("ml.a.large", 1, exactly(4), 1.0)])
    p = plan(toy(), request(4, allow=["ml.z.*", "ml.y.*"]), cat)
    assert (p.chosen, p.options) == (None, [])
    assert p.chosen_reason == "no instance type matches the constraints (allow: ml.z.*, ml.y.*)"
    p = plan(toy(), request(4, instance_type="ml.q.large"), cat)
    assert p.chosen_reason == ("no instance type matches the constraints "
                               "(instance_type: ml.q.large)")
    assert plan(toy(), request(4), catalog_with([])).chosen_reason == (
        "no instance type matches the constraints")


@pytest.mark.parametrize(("tokens_in", "binding"), [(3996, None), (3997, "context")])
def test_context_limit_is_inclusive(tokens_in, binding):
    p = plan(toy(), PlanRequest(max_input_tokens=tokens_in, max_output_tokens=100, concurrency=1,
                                gpu_memory_utilization=1.0),
             catalog_with([row("ml.a.large", 1, 10**10, 1.0)]))
    assert p.options[0].binding == binding
    assert (p.options[0].max_concurrency > 0) is (binding is None)
    if binding:
        assert p.chosen is None
        assert p.chosen_reason == ("context 4097 tokens exceeds the model's "
                                   "max_position_embeddings 4096")


def test_t4_cannot_serve_fp8_weights():
    cat = catalog_with([row("ml.g4dn.xlarge", 1, 10**10, 0.7, accelerator="NVIDIA T4")])
    p = plan(toy(), request(1, dtype="fp8"), cat)
    o = p.options[0]
    assert (o.fits, o.eligible, o.binding, o.max_concurrency) == (False, False, "dtype", 0)
    assert o.reason == "fp8 weights need an Ampere or newer GPU, not NVIDIA T4"
    p = plan(toy(), request(1), cat)  # a bf16 model runs there in fp16
    room = (10**10 - fixed(1)) // PER_SEQUENCE  # fp16 activations are as big as bf16
    assert p.chosen.dtype == "fp16" and p.chosen.reason == (
        f"fits: 1 model copy of tp 1; holds {room} concurrent requests; served in fp16 "
        "(no bf16 on this GPU)")


def test_warnings_carry_the_estimate_and_dtype_notes():
    s = toy().model_copy(update={"torch_dtype": None, "estimate_note": "not modelled exactly",
                                 "architecture": "LlamaForCausalLM"})
    p = plan(s, request(1), catalog_with([row("ml.a.large", 1, 10**10, 1.0)]))
    assert p.warnings == ["not modelled exactly",
                          "torch_dtype unset: served in fp16 as vLLM's dtype=auto does"]
    assert p.model.kv_cache_bytes_per_token == 1024
    assert p.model.estimate_note == "not modelled exactly"
    assert p.model.architecture == "LlamaForCausalLM"


def test_kv_cache_dtype_is_planned_as_asked():
    p = plan(toy(), request(1, kv_cache_dtype="fp8"),
             catalog_with([row("ml.a.large", 1, 10**10, 1.0)]))
    assert p.dtypes.kv_cache == "fp8" and p.model.kv_cache_bytes_per_token == 512
    assert p.chosen.per_gpu["kv_cache_bytes"] == 1000 * 512


def test_tp_that_cannot_split_the_heads_is_rejected_with_the_rule():
    s = toy().model_copy(update={"num_attention_heads": 6, "num_kv_heads": 3})
    p = plan(s, request(1), catalog_with([row("ml.x.4xlarge", 4, 10**10, 1.0)]))
    by_tp = {o.tensor_parallel_degree: o for o in p.options}
    assert (by_tp[4].binding, by_tp[4].reason, by_tp[4].max_concurrency) == (
        "tp_rule", "6 attention heads not divisible by tp 4", 0)
    assert (by_tp[2].binding, by_tp[2].reason) == (
        "tp_rule", "3 KV heads and tp 2: neither divides the other")
    assert by_tp[1].fits


def test_tp_rule_kv_heads_may_divide_tp_or_tp_divide_them_and_mla_has_none():
    from lmiflow.sizing.planner import tp_rule_violation

    assert tp_rule_violation(toy(), 4) is None  # 2 KV heads, tp 4: each GPU holds a copy
    assert tp_rule_violation(toy(), 2) is None
    mla = toy().model_copy(update={"num_kv_heads": 3, "mla_kv_lora_rank": 8,
                                   "mla_rope_head_dim": 2})
    assert tp_rule_violation(mla, 2) is None


def test_price_source_passes_through_and_uncertain_prices_are_flagged():
    uncertain = row("ml.a.large", 1, 10**10, 1.0) | {"price_source": "training rate (uncertain)"}
    p = plan(toy(), request(1), catalog_with([uncertain]))
    assert p.chosen.price_source == "training rate (uncertain)"
    assert p.chosen_reason == ("cheapest option that fits the workload: ml.a.large with tp 1 at "
                               "$1.00/h (price uncertain: training rate (uncertain))")
    unsourced = row("ml.a.large", 1, 10**10, 1.0) | {"price_source": None}
    assert plan(toy(), request(1), catalog_with([unsourced])).chosen.price_source == ""


def test_when_nothing_fits_the_reason_names_every_constraint_and_the_largest_instance():
    cat = catalog_with([row("ml.big.large", 1, exactly(4) - 1, 1.0),
                        row("ml.wide.4xlarge", 4, fixed(1) - 1, 2.0)])
    p = plan(toy(), request(4, tensor_parallel_degree=1), cat)
    assert p.chosen is None
    # the 4-GPU instance has less memory per GPU but more in all: it is the largest
    assert p.chosen_reason.startswith("no option fits: constraints hit: kv_cache, overhead; "
                                      "even ml.wide.4xlarge fails (weights 0.0 GB + runtime ")


def test_priced_out_options_that_fit_rank_before_those_that_do_not():
    cat = catalog_with([row("ml.small.large", 1, exactly(4) - 1, 0.5),
                        row("ml.b.large", 1, exactly(4), 2.0)])
    p = plan(toy(), request(4, max_usd_per_hour=1.0), cat)
    assert [(o.instance_type, o.fits, o.eligible) for o in p.options] == [
        ("ml.b.large", True, False), ("ml.small.large", False, False)]


# ---- scale-out to max_instance_count (memory-bound) ----------------------------------------------

ROOM = 16_384_000  # what 4 more 1000-token sequences add to one prefill step (4000 x 2048 x 2)


def test_scale_out_adds_instances_until_the_kv_cache_holds_the_workload():
    """Eight requests on one GPU that holds four of them with room to spare: two instances."""
    cat = catalog_with([row("ml.x.large", 1, exactly(4) + ROOM, 1.5)])
    o = plan(toy(), request(8, max_instance_count=3), cat).chosen
    assert (o.instance_count, o.concurrency_per_copy) == (2, 4)
    room = (exactly(4) + ROOM - fixed(4)) // PER_SEQUENCE
    assert (o.max_concurrency_per_copy, o.max_concurrency) == (room, room * 2)
    assert o.usd_per_hour == 3.0
    assert o.reason == (f"fits: 1 model copy of tp 1 on each of 2 instances; holds {room * 2} "
                        f"concurrent requests ({room} per copy)")


def test_scale_out_stops_at_max_instance_count():
    cat = catalog_with([row("ml.x.large", 1, exactly(4) + ROOM, 1.5)])
    assert plan(toy(), request(8, max_instance_count=2), cat).chosen.instance_count == 2
    capped = plan(toy(), request(12, max_instance_count=2), cat).options[0]
    assert (capped.binding, capped.instance_count) == ("kv_cache", 1)  # needs 3 instances
    p = plan(toy(), request(40, instance_count=2, max_instance_count=2), cat)
    o = p.options[0]
    assert o.binding == "kv_cache" and o.instance_count == 2
    assert o.reason.startswith("KV cache: room for ") and " on 2 instances; " in o.reason


def test_predicted_throughput_and_cost_follow_from_the_predicted_latency():
    """Throughput: every request's output tokens per end-to-end latency; cost: the hourly
    price over an hour of that throughput."""
    o = plan(toy(), request(4), catalog_with([row("ml.x.large", 1, exactly(4), 1.8)])).chosen
    pred = o.predicted
    assert pred is not None and pred.terms_ms
    assert pred.output_tokens_per_s == pytest.approx(4 * 100 / (pred.e2e_ms / 1000))
    assert o.usd_per_1m_output_tokens == pytest.approx(
        1.8 / (pred.output_tokens_per_s * 3600) * 1e6)
