"""Production's auto scaling on SageMaker (a mixin of targets.sagemaker; the requests are in
targets.autoscaling_plan)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from lmiflow.targets.aws_requests import aws_error, request
from lmiflow.targets.sagemaker_requests import VARIANT_NAME

if TYPE_CHECKING:
    from lmiflow.sizing.autoscaling import ScalingPlan

# one log for the whole target: these lines read with the ones sagemaker.py writes
logger = logging.getLogger("lmiflow.targets.sagemaker")


class ScalingOps:
    """Application Auto Scaling for SageMakerTarget (which holds send)."""

    # -- autoscaling (targets.autoscaling_plan) --

    def _scalable_target(self, name: str) -> dict | None:
        from lmiflow.targets.autoscaling_plan import describe_targets_request

        found = self.send(describe_targets_request(name, VARIANT_NAME))
        return next(iter(found.get("ScalableTargets") or []), None)

    def _instance_type(self, config_name: str | None) -> str | None:
        if not config_name:
            return None
        d = self.send(request("sagemaker", "DescribeEndpointConfig",
                               EndpointConfigName=config_name))
        return next((v.get("InstanceType") for v in d.get("ProductionVariants") or []), None)

    def apply_autoscaling(self, endpoint: str, plan: ScalingPlan) -> list[str]:
        from lmiflow.targets.autoscaling_plan import (
            METRIC,
            put_policy_request,
            register_request,
            resource_id,
        )

        self.send(register_request(endpoint, VARIANT_NAME, plan))
        self.send(put_policy_request(endpoint, VARIANT_NAME, plan))
        logger.info("autoscaling %s: %d..%d instances, target %g concurrent requests per "
                    "instance", endpoint, plan.min_instances, plan.max_instances,
                    plan.target_per_instance)
        return [f"registered {resource_id(endpoint, VARIANT_NAME)} "
                f"({plan.min_instances}..{plan.max_instances} instances)",
                f"target tracking on {METRIC} at {plan.target_per_instance:g}"]

    def remove_autoscaling(self, endpoint: str) -> bool:
        from lmiflow.targets.autoscaling_plan import removal_requests

        try:
            found = self._scalable_target(endpoint)
        except Exception as exc:
            if "AccessDenied" not in aws_error(exc)[0]:
                raise
            # a caller that never set up scaling may not look: DeleteEndpoint deregisters
            # what it can (SageMaker developer guide, endpoint-delete-with-scaling.html)
            logger.warning("autoscaling of %s not checked: %s", endpoint, aws_error(exc)[1])
            return False
        if found is None:
            return False
        for req in removal_requests(endpoint, VARIANT_NAME):
            try:
                self.send(req)
            except Exception as exc:
                if aws_error(exc)[0] != "ObjectNotFoundException":
                    raise
        logger.info("autoscaling of %s removed", endpoint)
        return True
