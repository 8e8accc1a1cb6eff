"""`lmiflow deploy CONFIG`: run the pipeline (or `--dry-run`: plan and render only)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import NoReturn


def add_parser(sub) -> None:
    p = sub.add_parser("deploy", help="Deploy, benchmark and promote a model (Prefect flow).",
                       description=__doc__)
    p.add_argument("config", metavar="CONFIG", help="Deployment config (YAML).")
    p.add_argument("--target", choices=("local", "sagemaker"), default=None,
                   help="Override target.kind from the config.")
    p.add_argument("--report-dir", default=None,
                   help="Where report.json/.md/.html go (default reports/<name>).")
    p.add_argument("--dry-run", action="store_true",
                   help="Stop after render_serving_properties: nothing created. Prints the plan, "
                        "serving.properties, how the weights get there and every AWS request.")
    p.add_argument("--json", action="store_true",
                   help="With --dry-run: print the planned report.json (every request in full).")
    p.add_argument("--alongside", action="append", default=[], metavar="CONFIG",
                   help="With --dry-run, in inference-component mode: another config naming "
                   "the same endpoint; its component counts in the packing (repeatable).")
    p.add_argument("--replace-failed", action="store_true",
                   help="Replace a Failed production endpoint with this run's candidate "
                   "(sets promotion.replace_failed).")
    p.add_argument("--verbose", "-v", action="store_true", help="Show Prefect's logs.")
    p.set_defaults(run=run)


def run(args) -> int:
    from lmiflow.errors import UserInputError
    from lmiflow.redact import install_log_redaction, register_environment
    from lmiflow.run_record import report_path
    from lmiflow.spec import load_spec
    from lmiflow.state_files import check_writable

    register_environment()  # HF_TOKEN, AWS keys: masked wherever they would surface
    install_log_redaction()
    # Prefect warns on import when it cannot create its home; _check_outputs says it once.
    warnings.filterwarnings("ignore", "Failed to create the Prefect home directory")

    overrides = {"target.kind": args.target} if args.target else {}
    if args.replace_failed:
        overrides["promotion.replace_failed"] = True
    spec = load_spec(args.config, overrides)
    report_dir = str(report_path(args.report_dir, spec.name))
    if args.dry_run:
        if args.report_dir:
            check_writable(Path(args.report_dir), "--report-dir")
        return dry_run(spec, args.report_dir, as_json=args.json, config=args.config,
                       alongside=args.alongside)
    if args.json:
        raise UserInputError("--json", "applies to --dry-run (a run writes report.json)")
    if args.alongside:
        raise UserInputError("--alongside", "applies to --dry-run")
    # Before Prefect is first imported (_check_outputs): it reads its settings once.
    if not args.verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # The API server would try to send telemetry: not from an unattended deploy.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Validate everything that can be validated before anything is created (exit 2): the
    # plan; what only the platform knows (credentials and permissions, rollback alarms, the
    # peak fleet within quota); then every place the run writes and production's state. The
    # platform goes first: _check_outputs imports Prefect, which creates its home directory.
    rec, (_, _, candidate) = _plan_directly(spec)
    from lmiflow import lifecycle, pipeline

    lifecycle.preflight(pipeline.target_for(spec), candidate, rec.planned_requests())
    _check_outputs(spec, Path(report_dir))
    return _run_flow(spec, report_dir)


def _check_outputs(spec, report_dir: Path) -> None:
    """Every place the run will write, checked before it creates anything: the report
    directory, Prefect's home (its database) and the target's own state; and production, which
    must not be Failed unless it may be replaced (the flow checks that again, with retries)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME

    from lmiflow.errors import UserInputError
    from lmiflow.lifecycle import check_production
    from lmiflow.pipeline import target_for
    from lmiflow.state_files import check_writable

    check_writable(report_dir, "--report-dir")
    if not PREFECT_API_URL.value():
        check_writable(Path(PREFECT_HOME.value()), "PREFECT_HOME")
    target = target_for(spec)
    target.check_state()
    try:
        check_production(target, spec)
    except UserInputError:
        raise
    except Exception:  # unreachable now (throttled, offline): the flow's own check retries
        pass


def _plan_directly(spec, alongside: list[str] | None = None):
    from lmiflow.run_record import AlongsideSteps, DirectSteps, RunRecord, plan_steps

    rec = RunRecord(spec, None)
    return rec, plan_steps(spec, rec, AlongsideSteps(alongside) if alongside else DirectSteps)


def dry_run(spec, report_dir: str | None, as_json: bool = False, config: str = "CONFIG",
            alongside: list[str] | None = None) -> int:
    import json
    import textwrap

    from lmiflow.plan_table import print_plan
    from lmiflow.run_record import write_report

    rec, (model, p, candidate) = _plan_directly(spec, alongside)
    report = rec.finish("planned")
    if as_json:
        print(json.dumps(report.to_json_dict(), indent=2))
        if report_dir:
            write_report(report, report_dir)
        return 0
    names = candidate.names
    print_plan(p, model.source)
    # An image URI is an identifier: on a line of its own, never wrapped.
    print("\nimage:" + (f"\n{candidate.image_uri}" if candidate.image_uri
                        else " none (the local target runs the model server directly)"))
    print(f"candidate:\n  endpoint         {names.endpoint}\n  endpoint config  "
          f"{names.endpoint_config}\n  model            {names.model}")
    for line in candidate.weights.summary():
        print(textwrap.fill(line, 80, subsequent_indent="  ", break_on_hyphens=False))
    _print_endpoint_plan(candidate)
    if candidate.component is not None:
        from lmiflow.report.components import component_lines

        print()
        for line in component_lines(candidate.component):
            print(line)
    print("\n# serving.properties\n" + candidate.properties, end="")
    if report.requests:
        _print_requests(report, config)
    if report_dir:
        path = write_report(report, report_dir)
        print(f"\nreport:\n{path}")  # a path: on a line of its own
    return 0


def _print_endpoint_plan(candidate) -> None:
    """Host, promotion and peak fleet, wrapped at 80 columns."""
    from textwrap import fill

    lines = []
    if candidate.host is not None:
        h = candidate.host
        lines.append(f"host: {h.inference_ami_version}, routing {h.routing_strategy}")
        if h.warning:
            lines.append(f"warning: {h.warning}")
    pr = candidate.promotion
    if pr is not None:
        lines.append(f"promotion: {pr.strategy}" + (f", first step {pr.traffic_step}"
                                                    if pr.traffic_step else "")
                     + (f"; rollback alarms (must exist): {', '.join(pr.alarms)}"
                        if pr.alarms else ""))
        peak = ", ".join(f"{n} x {t}" for t, n in pr.peak_instances.items())
        lines.append(f"peak fleet: {peak} ({pr.peak_assumption}); checked against the "
                     f"quota {', '.join(repr(q) for q in pr.quota_names.values())} before "
                     "anything is created")
    a = candidate.autoscaling
    if a is not None:
        lines.append(f"autoscaling: {a.min_instances}..{a.max_instances} instances, target "
                     f"{a.target_per_copy} concurrent requests per copy ({a.source}) = "
                     f"{a.target_per_instance:g} per instance; cooldowns in "
                     f"{a.scale_in_cooldown_s} s, out {a.scale_out_cooldown_s} s")
        lines += [f"  why: {w}" for w in a.why[:2]]
    for line in lines:
        print(fill(line, width=80, subsequent_indent="  "))


def _print_requests(report, config: str) -> None:
    """The compact list: one line per request, under the step that sends it."""
    import botocore

    from lmiflow.targets.aws_requests import AwsRequest, compact

    reqs = [AwsRequest(**r.model_dump()) for r in report.requests]
    print(f"\n# AWS requests: {len(reqs)}, in order, each valid for botocore "
          f"{botocore.__version__}\n# (every parameter: --dry-run --json)")
    print("\n".join(compact(reqs)))
    if report.iam_policy:
        print("\nIAM: the runner's policy and the execution role's:\n"
              f"  lmiflow iam {config}")


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so the run ends the same clean way:
    the flow removes its candidate and writes its report, then the API server stops."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def _raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signum)


def _run_flow(spec, report_dir: str) -> int:
    from prefect.settings import PREFECT_HOME
    from rich.console import Console

    from lmiflow.api_server import ApiServerError, prefect_api

    console = Console(stderr=True)
    console.print(f"[bold]lmiflow deploy[/bold] {spec.name} on {spec.target.kind}")
    # During the flow Prefect turns SIGTERM into its TerminationSignal and, once the flow has
    # ended, sends it again to the handler it found: this one.
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        with prefect_api(Path(PREFECT_HOME.value()) / "lmiflow-api-server.log"):
            state = _flow_with_progress(spec, report_dir, console)
    except ApiServerError as exc:
        print(f"lmiflow: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        _summary(Path(report_dir) / "report.json", spec, console)
        print(f"lmiflow: interrupted by {signal.Signals(signum).name}: the run was stopped and "
              "its candidate removed; production was not changed unless the report says "
              "promoted", file=sys.stderr)
        _exit_now(128 + signum)
    finally:
        signal.signal(signal.SIGTERM, previous)
    # The exit code says what happened to production (0: promoted), wherever the report went.
    code = 0 if state.is_completed() else 1
    path = _find_report(Path(report_dir), spec.name, str(state.state_details.flow_run_id))
    if path is None:
        print(f"lmiflow: warning: no report of this run could be written (see the log above); "
              f"{'production was promoted' if code == 0 else 'production was not changed'}",
              file=sys.stderr)
        return code
    _summary(path, spec, console)
    if path.parent != Path(report_dir):
        print(f"lmiflow: warning: the report could not be written to {report_dir}; it is in "
              f"{path.parent}", file=sys.stderr)
    return code


def _exit_now(code: int) -> NoReturn:
    """End the process now that an interrupted run has cleaned up (candidate removed, report
    written, API server stopped). A normal exit would first wait for what can no longer do
    any good: Prefect's log and event services draining into the stopped API server, and
    threads still waiting on an endpoint that answers nothing; the process lingered for
    minutes after its cleanup. Output and log files are flushed first."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _find_report(report_dir: Path, name: str, run_id: str) -> Path | None:
    """This run's report.json: in report_dir, or where the flow put it when report_dir could
    not take it (run_record.fallback_report_dirs)."""
    from lmiflow.run_record import fallback_report_dirs

    for directory in (report_dir, *fallback_report_dirs(name, run_id)):
        path = directory / "report.json"
        try:
            if json.loads(path.read_text()).get("run_id") == run_id:
                return path
        except (OSError, ValueError, AttributeError):
            continue
    return None


def _flow_with_progress(spec, report_dir: str, console):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from lmiflow.flows.deploy import deploy_llm
    from lmiflow.tasks.common import add_progress_listener

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        bars: dict[str, int] = {}

        def on_progress(step: str, fraction: float, text: str) -> None:
            if step not in bars:
                bars[step] = progress.add_task(step, total=1.0, info="")
            progress.update(bars[step], completed=fraction, info=text)

        remove = add_progress_listener(on_progress)
        try:
            return deploy_llm(spec, report_dir=report_dir, return_state=True)
        finally:
            remove()


def _summary(path: Path, spec, console) -> None:
    from pydantic import ValidationError

    from lmiflow.report.console import summary_lines
    from lmiflow.report.model import RunReport

    try:
        report = RunReport.model_validate_json(path.read_text())
    except (OSError, ValidationError) as exc:
        console.print(f"[red]no readable report at {path}[/red] ({type(exc).__name__})")
        return
    console.print()
    for text, style in summary_lines(report, cli_name(), _shown(path.parent / "report.html"),
                                     console.width):
        console.print(text, style=style, markup=False, highlight=False, soft_wrap=True)
    sys.stderr.flush()


def _shown(path: Path) -> str:
    """Relative to the working directory when inside it: shorter, and what a user typed."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def cli_name() -> str:
    """How to call this lmiflow again: the name when PATH finds this one, else its path."""
    import shutil

    exe = Path(sys.executable).parent / "lmiflow"
    if not exe.exists():
        return "lmiflow"
    found = shutil.which("lmiflow")
    if found and Path(found).resolve() == exe.resolve():
        return "lmiflow"
    return _shown(exe)
