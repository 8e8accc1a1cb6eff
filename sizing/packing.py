"""Inference components packed onto one endpoint's instances.

An endpoint in inference-component mode runs one instance type; each model on it is a
component whose every copy reserves whole accelerators (its tensor-parallel degree), host
memory and CPU cores on one instance. SageMaker places the copies itself; this answers the
question before anything exists: do all the copies the configs ask for fit, on how many
instances, and what is left on each. A copy that fits no empty instance is refused here, so
the config is fixed before an endpoint is created that could never place it.

First-fit decreasing (largest copies first, each on the first instance with room) is a
heuristic: every packing it shows is feasible, so its instance count is enough for these
copies, though not always the fewest possible.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, Field

MIB = 2**20


class InstanceShape(BaseModel):
    """What one instance offers the components on it."""

    instance_type: str
    accelerators: int = Field(ge=1)
    memory_mb: int = Field(ge=1, description="Host memory, MiB.")
    cpu_cores: float = Field(gt=0)


class ComponentNeed(BaseModel):
    """What one copy of a component reserves, and how many copies are asked for."""

    name: str
    accelerators: int = Field(ge=1)
    memory_mb: int = Field(ge=1, description="Host memory per copy, MiB.")
    cpu_cores: float = Field(gt=0)
    copies: int = Field(ge=0)


class PlacedInstance(BaseModel):
    copies: dict[str, int] = Field(default_factory=dict, description="Component -> copies.")
    accelerators: int = 0
    memory_mb: int = 0
    cpu_cores: float = 0.0


class Packing(BaseModel):
    shape: InstanceShape
    instances: list[PlacedInstance]
    max_copies_per_instance: dict[str, int] = Field(
        description="Each component alone on an empty instance.")

    @property
    def instance_count(self) -> int:
        return len(self.instances)


class DoesNotFit(ValueError):
    """A component whose one copy exceeds an empty instance."""

    def __init__(self, component: str, reason: str):
        self.component, self.reason = component, reason
        super().__init__(f"{component}: {reason}")


def memory_mb(nbytes: float) -> int:
    """Bytes as whole MiB, rounded up: a reservation must never be below the need."""
    return max(1, math.ceil(nbytes / MIB))


def copies_per_instance(need: ComponentNeed, shape: InstanceShape) -> int:
    """Copies of `need` alone on one empty instance of `shape`."""
    return min(shape.accelerators // need.accelerators, shape.memory_mb // need.memory_mb,
               math.floor(shape.cpu_cores / need.cpu_cores + 1e-9))


def check_fits(need: ComponentNeed, shape: InstanceShape) -> None:
    """Raise DoesNotFit naming the first resource one copy exceeds on an empty instance."""
    for what, asked, has, unit in (
            ("accelerators", need.accelerators, shape.accelerators, ""),
            ("memory", need.memory_mb, shape.memory_mb, " MiB"),
            ("CPU cores", need.cpu_cores, shape.cpu_cores, "")):
        if asked > has + 1e-9:
            raise DoesNotFit(need.name, f"one copy needs {asked:g}{unit} {what}; "
                                        f"{shape.instance_type} has {has:g}{unit}")


def _room(inst: PlacedInstance, need: ComponentNeed, shape: InstanceShape) -> bool:
    return (inst.accelerators + need.accelerators <= shape.accelerators
            and inst.memory_mb + need.memory_mb <= shape.memory_mb
            and inst.cpu_cores + need.cpu_cores <= shape.cpu_cores + 1e-9)


def pack(needs: list[ComponentNeed], shape: InstanceShape) -> Packing:
    """Every copy of every component on instances of `shape`, first-fit decreasing (most
    accelerators, then most memory, first). Raises DoesNotFit for a copy no instance holds."""
    for n in needs:
        check_fits(n, shape)
    names = [n.name for n in needs]
    if len(set(names)) != len(names):
        dup = next(x for x in names if names.count(x) > 1)
        raise DoesNotFit(dup, "two components of one endpoint share this name")
    order = sorted(needs, key=lambda n: (-n.accelerators, -n.memory_mb, -n.cpu_cores, n.name))
    instances: list[PlacedInstance] = []
    for n in order:
        for _ in range(n.copies):
            inst = next((i for i in instances if _room(i, n, shape)), None)
            if inst is None:
                inst = PlacedInstance()
                instances.append(inst)
            inst.copies[n.name] = inst.copies.get(n.name, 0) + 1
            inst.accelerators += n.accelerators
            inst.memory_mb += n.memory_mb
            inst.cpu_cores += n.cpu_cores
    return Packing(shape=shape, instances=instances,
                   max_copies_per_instance={n.name: copies_per_instance(n, shape)
                                            for n in needs})
