"""`lmiflow iam CONFIG`: the IAM permissions a SageMaker deploy of CONFIG needs, generated from
the requests it will send: the policy of the identity that runs the flow (CLI user or Prefect
worker role), and the execution role's policy and trust policy."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("iam", help="Print the IAM policies a SageMaker deploy of CONFIG needs.",
                       description=__doc__)
    p.add_argument("config", metavar="CONFIG", help="Deployment config (YAML).")
    p.add_argument("--json", action="store_true",
                   help="One JSON object: runner, execution_role, execution_role_trust, delete.")
    p.set_defaults(run=run)


def run(args) -> int:
    from lmiflow import pipeline
    from lmiflow.errors import UserInputError
    from lmiflow.run_record import DirectSteps, RunRecord, plan_steps
    from lmiflow.spec import load_spec
    from lmiflow.targets.iam import TRUST_POLICY

    spec = load_spec(args.config)
    if pipeline.target_for(spec).iam_policies([]) is None:  # before planning: nothing to ask
        raise UserInputError("target.kind", f"{spec.target.kind} sends no AWS requests: no IAM "
                             "policy to print (use a sagemaker config)")
    rec = RunRecord(spec, None)
    plan_steps(spec, rec, DirectSteps)
    r = rec.report
    delete = pipeline.target_for(spec).delete_policy(spec.name)
    doc = {"runner": r.iam_policy, "execution_role": r.execution_role_policy,
           "execution_role_trust": TRUST_POLICY, "delete": delete}
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"# The runner: the identity that runs `lmiflow deploy {args.config}` (or the Prefect\n"
          "# worker's role). Generated from the run's requests; names with a spec hash or a\n"
          "# Hub commit are wildcards, so the policy serves every run of this config.")
    print(json.dumps(r.iam_policy, indent=2))
    print(f"\n# The execution role SageMaker assumes ({spec.target.role_arn}): read the model\n"
          "# from S3, pull the LMI image, write logs and metrics.")
    print(json.dumps(r.execution_role_policy, indent=2))
    print("\n# Its trust policy")
    print(json.dumps(TRUST_POLICY, indent=2))
    print(f"\n# Whoever runs `lmiflow endpoints delete {spec.name} --target sagemaker`: the\n"
          "# endpoint, its candidates, configs and models, and the S3 files only they used.\n"
          "# Not the runner's: a deploy never deletes production.")
    print(json.dumps(delete, indent=2))
    return 0
