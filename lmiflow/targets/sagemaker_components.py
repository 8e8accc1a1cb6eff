"""What the SageMaker target does in inference-component mode, behind targets.base.Target: the
component placed on an endpoint once it is InService, production's component created or
updated copy by copy (SageMaker rolls it back by itself when the new copies fail), the copies'
auto scaling, and components removed before their endpoint (SageMaker refuses to delete an
endpoint that still has components). Requests come from targets/components_plan.py.

An invocation of a component endpoint must name the component (InferenceComponentName); the
target remembers which component it placed or planned on which endpoint, so invoke() keeps
the interface's signature and no caller needs to know about components.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from lmiflow.targets import components_plan as cp
from lmiflow.targets.aws_requests import aws_error, is_existing, is_missing
from lmiflow.targets.components_plan import ComponentPlan

logger = logging.getLogger(__name__)
CANDIDATE_COMPONENT = re.compile(r"-ic-[0-9a-f]{8}$")


class ComponentFailed(RuntimeError):
    """A component did not reach InService with a running copy (or was rolled back)."""


class ComponentOps:
    """Mixed into SageMakerTarget (which provides send, _describe, wait, the clients)."""

    mode: str
    send: Callable[..., Any]
    poll_interval_s: float
    _clock: Callable[[], float]
    _sleep: Callable[[float], None]
    _pages: Callable[..., Any]
    _describe: Callable[..., Any]
    wait: Callable[..., Any]
    create_endpoint: Callable[..., Any]
    delete_endpoint: Callable[..., Any]

    @property
    def idle(self) -> set[str]:
        """Production endpoints this run's promotion left at zero copies."""
        if "_idle" not in self.__dict__:
            self.__dict__["_idle"] = set()
        return self.__dict__["_idle"]

    def starts_on_request(self, endpoint: str) -> bool:
        return endpoint in self.idle

    @property
    def routes(self) -> dict[str, str]:
        """Endpoint -> the component this run invokes there."""
        if "_routes" not in self.__dict__:
            self.__dict__["_routes"] = {}
        return self.__dict__["_routes"]

    def _component(self, name: str) -> dict | None:
        try:
            return self.send(cp.describe_component_request(name))
        except Exception as exc:
            if is_missing(exc):
                return None
            raise

    def wait_component(self, name: str, timeout_s: float, first_copy: bool = True) -> dict:
        """Poll until the component is InService and (first_copy) at least one copy runs:
        after a scale from zero the endpoint answers only once a copy is there."""
        start = self._clock()
        while True:
            d = self._component(name)
            if d is None:
                raise ComponentFailed(f"inference component {name} does not exist")
            status = d.get("InferenceComponentStatus")
            copies = (d.get("RuntimeConfig") or {}).get("CurrentCopyCount", 0)
            if status == "Failed":
                raise ComponentFailed(f"inference component {name} Failed: "
                                      f"{d.get('FailureReason') or 'no reason given'}")
            if status == "InService" and (copies >= 1 or not first_copy):
                return d
            elapsed = self._clock() - start
            if elapsed >= timeout_s:
                raise ComponentFailed(f"inference component {name} still {status} with "
                                      f"{copies} running copies after {elapsed:.0f} s")
            self._sleep(min(self.poll_interval_s, max(timeout_s - elapsed, 0.0)))

    def _wait_component_gone(self, name: str, timeout_s: float) -> None:
        start = self._clock()
        while self._component(name) is not None:
            if self._clock() - start >= timeout_s:
                raise ComponentFailed(f"inference component {name} still exists "
                                      f"{timeout_s:.0f} s after it was deleted")
            self._sleep(self.poll_interval_s)

    def _unscale(self, name: str) -> None:
        """Production's component has auto scaling (a candidate's never has)."""
        if CANDIDATE_COMPONENT.search(name):
            return
        for req in cp.unscale_requests(name):
            try:
                self.send(req)
            except Exception as exc:
                if aws_error(exc)[0] != "ObjectNotFoundException":  # never registered
                    raise

    def delete_component(self, name: str, timeout_s: float = 1800) -> bool:
        self._unscale(name)
        try:
            self.send(cp.delete_component_request(name))
        except Exception as exc:
            if is_missing(exc):
                return False
            raise
        self._wait_component_gone(name, timeout_s)
        logger.info("deleted inference component %s", name)
        return True

    def components_on(self, endpoint: str) -> list[str]:
        """The components on an endpoint (none in endpoint mode: not asked)."""
        if self.mode != "inference_component":
            return []
        req = cp.list_components_request(endpoint)
        names: list[str] = []
        for page in self._pages(req):
            names += [c["InferenceComponentName"]
                      for c in page.get("InferenceComponents", [])]
        return names

    # -- the Target hooks ----------------------------------------------------------------------

    def check_shared_endpoint(self, production: str, component: ComponentPlan | None) -> None:
        """Production's endpoint, where it exists, must take this component: its endpoint
        config fixes the instance type and limits (components_plan.shared_endpoint_error)."""
        if component is None:
            return
        from lmiflow.errors import UserInputError

        try:
            current = self.send(cp.describe_endpoint_request(production))
        except Exception as exc:
            if is_missing(exc):
                return  # a first deploy: this config's endpoint config sets them
            raise
        name = current.get("EndpointConfigName")
        if not name:
            return
        config = self.send(cp.describe_endpoint_config_request(name))
        variants = config.get("ProductionVariants") or [{}]
        problem = cp.shared_endpoint_error(component, name, variants[0])
        if problem:
            raise UserInputError(*problem)

    def place_component(self, endpoint: str, model: str, component: ComponentPlan | None,
                        tags: dict[str, str], timeout_s: float) -> None:
        """The candidate's component on its InService endpoint, waited for until a copy
        runs (adopted when an interrupted run already made it)."""
        if component is None:
            return
        try:
            self.send(cp.create_component_request(component.candidate, endpoint, model,
                                                  component, tags))
            logger.info("creating inference component %s on %s", component.candidate,
                        endpoint)
        except Exception as exc:
            if not is_existing(exc):
                raise
            logger.info("inference component %s exists: adopting it", component.candidate)
        self.wait_component(component.candidate, timeout_s)
        self.routes[endpoint] = component.candidate

    def promote_component(self, production: str, candidate_endpoint: str, endpoint_config: str,
                          model: str, component: ComponentPlan | None, tags: dict[str, str],
                          timeout_s: float, wait_interval_s: int = 0) -> str | None:
        """Production's component on the candidate's model: the candidate goes first (its
        component, then its endpoint), production's endpoint is created on a first deploy,
        then its component is created or updated copy by copy, waited for until a copy of
        the new model runs, and its copies' auto scaling is put in place. None where the
        model is not a component (the caller promotes the endpoint)."""
        if component is None:
            return None
        self.delete_component(component.candidate, timeout_s)
        self.delete_endpoint(candidate_endpoint)
        action = []
        if self._describe(production) is None:
            self.create_endpoint(production, endpoint_config, tags)
            st = self.wait(production, timeout_s)
            if st.status != "InService":
                raise ComponentFailed(f"{production} is {st.status}: "
                                      f"{st.failure_reason or 'no reason given'}")
            action.append("endpoint created")
        created = self._component(component.name) is None
        if created:
            self.send(cp.create_component_request(component.name, production, model,
                                                  component, tags))
            action.append(f"component {component.name} created")
        else:
            self.send(cp.update_component_request(component.name, model, component,
                                                  wait_interval_s))
            action.append(f"component {component.name} updated (rolling, one copy at a time)")
        # An update keeps the copy count, and at min copies 0 an idle component has none: it
        # gets one only when a request arrives, so waiting for a copy would wait out the
        # timeout although production already serves the new model. A create asks for
        # CopyCount copies (at least one), so a copy comes.
        d = self.wait_component(component.name, timeout_s,
                                first_copy=created or not component.scales_to_zero)
        serving = (d.get("Specification") or {}).get("ModelName")
        if serving != model:
            raise ComponentFailed(f"inference component {component.name} serves {serving} "
                                  "after the update (rolled back)")
        self.routes[production] = component.name
        self.idle.discard(production)
        if not (d.get("RuntimeConfig") or {}).get("CurrentCopyCount", 0):
            self.idle.add(production)
            action.append("no copy running (min copies 0): production starts on the next "
                          "request, after a cold start")
        self.scale_component(component)
        return "; ".join(action)

    def scale_component(self, component: ComponentPlan) -> None:
        """Auto scaling on the component's copies (registering again updates the bounds; a
        policy of the same name is replaced, so scaling stays continuous across updates)."""
        arn = "<from the step policy>"
        for req in cp.scaling_requests(component, arn):
            if req.operation == "PutMetricAlarm":
                req = req.model_copy(update={"params": {**req.params, "AlarmActions": [arn]}})
            resp = self.send(req)
            if req.params.get("PolicyType") == "StepScaling":
                arn = resp["PolicyARN"]
        logger.info("copies of %s scale %d-%d on %d concurrent requests per copy",
                    component.name, component.scaling.min_copies,
                    component.scaling.max_copies, component.scaling.target_per_copy)
