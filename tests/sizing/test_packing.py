"""Packing inference components onto instances, with cases worked by hand."""

from __future__ import annotations

import pytest
from lmiflow.sizing.packing import (
    ComponentNeed,
    DoesNotFit,
    InstanceShape,
    copies_per_instance,
    memory_mb,
    pack,
)

# ml.g5.12xlarge: 4 A10G, 192 GiB host memory, 48 vCPUs
G5_12X = InstanceShape(instance_type="ml.g5.12xlarge", accelerators=4, memory_mb=192 * 1024,
                       cpu_cores=48)


def need(name, acc, mem_mb, cpu=1.0, copies=1):
    return ComponentNeed(name=name, accelerators=acc, memory_mb=mem_mb, cpu_cores=cpu,
                         copies=copies)


def test_memory_rounds_up_to_whole_mib():
    assert memory_mb(2**20) == 1
    assert memory_mb(2**20 + 1) == 2
    assert memory_mb(16_060_522_496) == 15317  # 16.06 GB of weights: 15316.5 MiB -> 15317


def test_two_models_share_one_instance():
    # 8B at tp 2 (15317 MiB) and 7B at tp 1 (14000 MiB) x2: 2 + 1 + 1 = 4 accelerators
    p = pack([need("llama", 2, 15317), need("qwen", 1, 14000, copies=2)], G5_12X)
    assert p.instance_count == 1
    assert p.instances[0].copies == {"llama": 1, "qwen": 2}
    assert p.instances[0].accelerators == 4
    assert p.instances[0].memory_mb == 15317 + 2 * 14000


def test_a_fifth_accelerator_opens_a_second_instance():
    p = pack([need("llama", 2, 15317), need("qwen", 1, 14000, copies=3)], G5_12X)
    assert p.instance_count == 2
    # largest first: llama (2) then qwen x2 fill the first; the third qwen copy goes second
    assert [i.copies for i in p.instances] == [{"llama": 1, "qwen": 2}, {"qwen": 1}]


def test_memory_binds_before_accelerators():
    # 4 accelerators but 100 GiB per copy: 192 GiB holds one copy
    big = need("big", 1, 100 * 1024, copies=2)
    assert copies_per_instance(big, G5_12X) == 1
    assert pack([big], G5_12X).instance_count == 2


def test_cpu_cores_bind_too():
    busy = need("busy", 1, 1024, cpu=20, copies=3)  # 48 cores hold two
    assert copies_per_instance(busy, G5_12X) == 2
    assert pack([busy], G5_12X).instance_count == 2


def test_a_copy_larger_than_the_instance_does_not_fit():
    with pytest.raises(DoesNotFit) as e:
        pack([need("llama-70b", 8, 140_000)], G5_12X)
    assert e.value.component == "llama-70b"
    assert "8 accelerators" in e.value.reason and "ml.g5.12xlarge has 4" in e.value.reason
    with pytest.raises(DoesNotFit, match="memory"):
        pack([need("fat", 1, 200 * 1024)], G5_12X)


def test_two_components_may_not_share_a_name():
    with pytest.raises(DoesNotFit, match="share this name"):
        pack([need("a", 1, 10), need("a", 1, 10)], G5_12X)


def test_no_copies_needs_no_instance():
    assert pack([need("idle", 1, 10, copies=0)], G5_12X).instance_count == 0
