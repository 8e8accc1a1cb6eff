"""An in-memory Target: the lifecycle's decisions tested without processes, AWS or Prefect."""

from __future__ import annotations

import json

from lmiflow.targets.base import (
    EndpointLock,
    EndpointStatus,
    EndpointVariant,
    Target,
    TrafficPolicy,
)


class MemoryTarget(Target):
    kind = "memory"

    def __init__(self, answer: dict | None = None):
        self.models: dict[str, str] = {}  # name -> model_data
        self.configs: dict[str, str] = {}  # name -> model name
        self.endpoints: dict[str, EndpointStatus] = {}
        self.baselines: dict[str, dict] = {}
        self.calibration: dict | None = None  # the calibration store's JSON
        self.updates: list[tuple[str, str, TrafficPolicy | None]] = []
        self.roll_back = False  # update_endpoint ends InService on the old config
        self.answer = answer or {"generated_text": " hi", "details": {"generated_tokens": 2}}

    # planning: not what these tests are about
    def instance_catalog(self):
        raise AssertionError("not planned here")

    def serving_model_id(self, model_id, local_dir):
        return model_id

    def image_uri(self, backend, version, override):
        return None

    def serving_engine(self, backend):
        return backend

    def endpoint_variant(self, instance_type, instance_count, weights_bytes):
        return EndpointVariant(instance_type=instance_type, instance_count=instance_count)

    def endpoint_lock(self, name, run_id=None):
        return EndpointLock()

    def stage(self, name, files):
        return f"mem://{name}/"

    def create_model(self, name, model_data, image_uri, env, tags, *, network_isolation=False):
        self.models[name] = model_data

    def create_endpoint_config(self, name, model_name, variant, tags, component=None):
        self.configs[name] = model_name

    def create_endpoint(self, name, config_name, tags):
        self.endpoints[name] = EndpointStatus(name=name, status="InService",
                                              config_name=config_name)

    def update_endpoint(self, name, config_name, policy=None, *, autoscaled=False):
        self.updates.append((name, config_name, policy))
        if not self.roll_back:
            self.endpoints[name] = self.endpoints[name].model_copy(
                update={"config_name": config_name})

    def describe(self, name):
        st = self.endpoints.get(name)
        return None if st is None else st.model_copy()

    def list_endpoints(self):
        return list(self.endpoints.values())

    def list_resources(self, prefix):
        return {kind: sorted(n for n in d if n.startswith(prefix)) for kind, d in (
            ("models", self.models), ("endpoint_configs", self.configs),
            ("endpoints", self.endpoints))}

    def config_model_name(self, config_name):
        return self.configs.get(config_name)

    def invoke(self, name, payload, timeout_s=None):
        if name not in self.endpoints:
            raise LookupError(name)
        return json.dumps(self.answer).encode()

    def invoke_stream(self, name, payload, timeout_s=None):
        raise AssertionError("not streamed here")

    def delete_endpoint(self, name):
        return self.endpoints.pop(name, None) is not None

    def delete_endpoint_config(self, name):
        return self.configs.pop(name, None) is not None

    def delete_model(self, name):
        return self.models.pop(name, None) is not None

    def load_baseline(self, endpoint):
        return self.baselines.get(endpoint)

    def save_baseline(self, endpoint, data):
        self.baselines[endpoint] = data
        return f"mem://{endpoint}/baseline.json"

    def calibration_uri(self):
        return "mem://calibration.json"

    def load_calibration(self, *, offline=False):
        return self.calibration

    def update_calibration(self, change):
        self.calibration = json.loads(json.dumps(change(self.calibration)))  # as stored
        return self.calibration_uri()

    # -- test helpers --

    def deployed(self, endpoint: str, config: str, model: str) -> None:
        """An endpoint with its config and model, as a finished run leaves them."""
        self.models[model] = f"mem://{model}/"
        self.configs[config] = model
        self.create_endpoint(endpoint, config, {})


class FlowMemoryTarget(MemoryTarget):
    """The in-memory target, able to carry a whole deploy flow (tests/e2e's fault tests): it
    plans over this machine as the local target does, and answers invocations (and response
    streams, one token event per requested token) at once. The flow's control (retries,
    permanent faults, throttling, smoke and invoke errors, the report directory) runs as on
    any target; no model server is started. Use `memory_flow_target` (tests/conftest.py)."""

    kind = "local"  # what the specs ask for; nothing outside targets branches on it

    def __init__(self, answer: dict | None = None):
        super().__init__(answer)
        self.invocations: list[str] = []  # endpoint names, in order
        self.never_in_service = False  # new endpoints stay Creating (a wait that times out)

    # planning: the local target's (this machine, no image, lmiflow's own server)
    def instance_catalog(self):
        from lmiflow.sizing.catalog import catalog_with

        from lmiflow.targets.local_machine import detect

        return catalog_with([detect()])

    def serving_engine(self, backend):
        return "local"

    def create_endpoint(self, name, config_name, tags):
        super().create_endpoint(name, config_name, tags)
        if self.never_in_service:
            self.endpoints[name] = self.endpoints[name].model_copy(update={"status": "Creating"})

    def invoke(self, name, payload, timeout_s=None):
        self.invocations.append(name)
        return super().invoke(name, payload, timeout_s)

    def invoke_stream(self, name, payload, timeout_s=None):
        """A response stream as the local server writes it: one token event per token asked
        for (max_new_tokens), then the details."""
        self.invocations.append(name)
        if name not in self.endpoints:
            raise LookupError(name)
        n = int((payload.get("parameters") or {}).get("max_new_tokens") or 1)
        lines = [json.dumps({"token": {"id": 5, "text": " tok", "log_prob": -0.1}}).encode()
                 for _ in range(n - 1)]
        lines.append(json.dumps({
            "token": {"id": 5, "text": " tok", "log_prob": -0.1},
            "generated_text": " tok" * n,
            "details": {"finish_reason": "length", "generated_tokens": n}}).encode())
        return iter(lines)
