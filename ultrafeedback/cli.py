"""The ``ultrafeedback`` command line.

Exit codes (scripts may rely on them):
  0  success
  1  unexpected error (a bug or an infrastructure failure; the message says which)
  2  bad input: invalid spec or override, settings that contradict each other (one line each), missing or
     unreadable source file
  3  a quality gate failed, or the judge's circuit breaker opened: the run stopped before publishing
  4  another run holds the dataset's lease: nothing was done (or, with --wait, it was still held
     when the wait timed out); also when a run lost its lease to another and stopped
  5  the run reached execution.max_cost_usd: calls were held back, what was done is kept (a rerun with a
     higher cap continues)
  6  the release was published to the store, but pushing it to a Hub target failed (it is kept;
     `ultrafeedback publish SPEC` pushes it again)
  130 interrupted (Ctrl-C or SIGTERM)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXIT_OK, EXIT_ERROR, EXIT_INPUT, EXIT_GATE, EXIT_LEASE, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
EXIT_BUDGET = 5
EXIT_PUSH = 6


def demo_spec() -> Path:
    """The packaged demo spec (its sources sit beside it, in the same package data)."""
    from importlib.resources import files

    return Path(str(files("ultrafeedback.deployments") / "specs" / "demo.yaml"))


def _quiet_environment(verbose: bool) -> None:
    """Offline-friendly Prefect defaults; set before Prefect is imported. User settings win."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    if not verbose:
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        # the CLI reports a failed run itself, in one clear line; Prefect's tracebacks are for -v
        os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL", "CRITICAL")
        os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL", "CRITICAL")
        os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_LEVEL", "WARNING")


def _add_spec_args(parser: argparse.ArgumentParser, spec_required: bool = True) -> None:
    if spec_required:
        parser.add_argument("spec", help="the dataset spec (YAML)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec key by dotted path, e.g. --set endpoints.openai.base_url=http://host/v1 "
        "or --set models.gpt-4.sampling.temperature=0.7 (repeatable)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show Prefect's logs")


def _add_wait_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait",
        action="store_true",
        help="when another run is writing this dataset (holds its lease), wait for it to finish and then run "
        "(only what is still missing is sent); without it such a run exits with code 4 at once",
    )
    parser.add_argument(
        "--wait-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="with --wait: give up (exit 4) after this many seconds (default: wait as long as it takes)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ultrafeedback",
        description="Build UltraFeedback-style preference datasets from a spec file.",
        epilog="Exit codes: 0 ok, 1 unexpected error, 2 bad spec or input, 3 a quality gate failed (or the judge's "
        "circuit breaker opened), "
        "4 another run holds the dataset's lease, 5 the cost cap was reached, 6 published to the store but a Hub "
        "push failed, 130 interrupted.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("build", help="run every stage and publish a release; prints the release URI last")
    _add_spec_args(p)
    _add_wait_args(p)
    p = sub.add_parser(
        "refresh",
        help="the same as build: after adding instructions, models or aspects, only the new content keys run",
    )
    _add_spec_args(p)
    _add_wait_args(p)
    p = sub.add_parser(
        "retry-failed",
        help="list the failed units, then build again: exactly the failed and missing keys are re-sent "
        "(judge calls whose answers stayed unparseable after judge.parse_retries re-asks only with --reparse)",
    )
    _add_spec_args(p)
    _add_wait_args(p)
    p.add_argument(
        "--reparse",
        action="store_true",
        help="also send again the judge calls that failed to parse after every re-ask (execution.reparse_failed)",
    )
    p = sub.add_parser("demo", help="build the embedded demo (CPU model, heuristic judge, no key, no GPU)")
    _add_spec_args(p, spec_required=False)
    _add_wait_args(p)
    p = sub.add_parser(
        "validate",
        help="validate a spec (and overrides) and its local source files (they exist and hold the mapped "
        "columns) without running anything",
    )
    _add_spec_args(p)
    p = sub.add_parser(
        "estimate",
        help="the calls, tokens and cost a build would make now, per model and endpoint (Batch API discount "
        "included); runs ingest and assign, sends nothing",
    )
    _add_spec_args(p)
    p.add_argument("--tokenizer", default=None, help="count prompt tokens with this tokenizer (default o200k_base)")
    p = sub.add_parser(
        "publish",
        help="push a release in the store (the latest, or --version N) to the spec's Hub targets (publish.targets "
        "kind: hub): again after a push that failed, or to a new repo; checks the token and the repo first",
    )
    _add_spec_args(p)
    p.add_argument("--version", type=int, default=None, metavar="N", help="the release to push (default: the latest)")
    p = sub.add_parser("status", help="stage counts, failures by reason, gate results and releases")
    _add_spec_args(p)
    p.add_argument("--failures", type=int, default=5, metavar="N", help="failures to list per stage")
    sub.add_parser(
        "simulate",
        help="run the OpenAI-compatible simulator server (for tests, benchmarks and dry runs); "
        "see `ultrafeedback simulate --help`",
        add_help=False,
    )
    return parser


def _run_build(spec_path: str, overrides: list[str], wait_s: float, command: str = "build") -> int:
    from ultrafeedback.spec import load_spec

    spec = load_spec(spec_path, overrides)  # fail fast, before Prefect starts
    from ultrafeedback.tasks.common import store_for

    store = store_for(spec)
    store.probe()  # an unwritable store or a wrong key: exit 2 now, not after Prefect started
    if any(target.kind == "hub" for target in spec.publish.targets):
        from ultrafeedback.tasks.publish.hub import check_hub_targets

        check_hub_targets(spec)  # no token, a token the Hub refuses, a repo it cannot write: exit 2 now
    from ultrafeedback.infra import stop
    from ultrafeedback.infra.lease import dataset_lease

    # Ctrl-C and SIGTERM stop the run (infra.stop): while shards run, no new request starts, those on the
    # wire get execution.stop_grace_s, what arrived is stored and the summary says what was spent (exit
    # 130); elsewhere they interrupt at once. Either way the dataset's lease is released on the way out.
    stop.install_signal_handlers()
    stop.shield_local_prefect_server()
    # one run writes a dataset at a time: a second one stops (exit 4) or waits here, before Prefect starts;
    # the flow finds this process holding the lease and keeps it
    with dataset_lease(store, wait_s=wait_s, notify=lambda message: print(message, file=sys.stderr, flush=True)):
        from ultrafeedback.flows.build import build

        uri = build(spec_path=str(Path(spec_path).resolve()), overrides=overrides, command=command)
    sys.stderr.flush()
    print(uri, flush=True)
    return EXIT_OK


def _publish(spec_path: str, overrides: list[str], version: int | None) -> int:
    """``ultrafeedback publish``: push a stored release to the spec's Hub targets."""
    from ultrafeedback.spec import load_spec
    from ultrafeedback.tasks.common import store_for
    from ultrafeedback.tasks.publish.hub import PushFailed, check_hub_targets, push_failure, push_release
    from ultrafeedback.tasks.publish.publish import list_releases

    spec = load_spec(spec_path, overrides)
    targets = [target for target in spec.publish.targets if target.kind == "hub"]
    if not targets:
        print(f"error: {spec_path}: no publish target of kind hub in publish.targets", file=sys.stderr)
        return EXIT_INPUT
    store = store_for(spec)
    releases = {release["version"]: release for release in list_releases(store)}
    chosen = max(releases, default=None) if version is None else version
    if chosen not in releases:
        have = ", ".join(f"v{n}" for n in sorted(releases)) or "none"
        print(f"error: no release {'' if chosen is None else f'v{chosen} '}in {store.uri()} (releases: {have})",
              file=sys.stderr)  # fmt: skip
        return EXIT_INPUT
    check_hub_targets(spec)
    release, failures = releases[chosen], []
    for target in targets:
        try:
            pushed = push_release(release["uri"], chosen, target, store.storage_options)
        except Exception as exc:  # noqa: BLE001 - reported, with every other target's outcome
            failures.append(push_failure(target, exc))
        else:
            print(f"hub:{target.uri} v{chosen}: {pushed['uri']}", flush=True)
    if failures:
        raise PushFailed(release, failures)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    from ultrafeedback.infra.stop import fast_exit

    fast_exit()  # seconds less at exit (a build imports Prefect, pandas, pyarrow)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "simulate":  # the simulator parses its own options (and --help)
        from ultrafeedback.infra.simulator.server import main as simulate

        return simulate(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_environment(getattr(args, "verbose", False))

    from ultrafeedback.spec import SpecError

    try:
        if args.command == "validate":
            from ultrafeedback.spec import load_spec

            spec = load_spec(args.spec, args.overrides)
            from ultrafeedback.tasks.assign.assign import prompt_format_versions

            prompt_format_versions(spec)
            from ultrafeedback.tasks.ingest.loaders import check_sources

            check_sources(spec)
            print(
                f"{args.spec}: valid spec {spec.name!r}: {len(spec.sources)} sources, {len(spec.models)} models, "
                f"k={spec.completions_per_instruction}, judge {spec.judge.backend}:{spec.judge.model or 'heuristic'}"
            )
            return EXIT_OK
        if args.command == "estimate":
            from ultrafeedback.estimate import print_estimate

            return print_estimate(args.spec, args.overrides, args.tokenizer)
        if args.command == "status":
            from ultrafeedback.status import print_status

            return print_status(args.spec, args.overrides, args.failures)
        if args.command == "publish":
            return _publish(args.spec, args.overrides, args.version)
        if args.command == "retry-failed":
            from ultrafeedback.status import print_status

            print_status(args.spec, args.overrides, 20)
            if args.reparse:
                args.overrides = [*args.overrides, "execution.reparse_failed=true"]
        spec_path = str(demo_spec()) if args.command == "demo" else args.spec
        wait_s = (float("inf") if args.wait_timeout is None else args.wait_timeout) if args.wait else 0.0
        command = "build" if args.command == "demo" else args.command  # the flow run's name: {dataset}/{command}
        return _run_build(spec_path, args.overrides, wait_s, command)
    except SpecError as exc:
        for line in getattr(exc, "lines", None) or [str(exc)]:  # a contradiction per line, each standing alone
            print(f"error: {line}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt as exc:
        print(f"interrupted{f' ({exc})' if str(exc) else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - mapped to exit codes below
        return _report_failure(exc)


def _is_cancelled_run(exc: Exception) -> bool:
    """Prefect's ``CancelledRun`` (a flow that returned Cancelled); without importing Prefect when
    the failure came before it was (a check that fails before Prefect starts must not start it)."""
    if "prefect" not in sys.modules:
        return False
    from prefect.exceptions import CancelledRun

    return isinstance(exc, CancelledRun)


def _report_failure(exc: Exception) -> int:
    from ultrafeedback.expectations.gate import GateFailed
    from ultrafeedback.infra.lease import LeaseHeld, LeaseLost
    from ultrafeedback.infra.llm.openai_compat import MissingAPIKeyError
    from ultrafeedback.infra.store import StoreUnavailable
    from ultrafeedback.tasks.annotate.judge import JudgeCircuitOpen
    from ultrafeedback.tasks.ingest.loaders import IngestError

    if _is_cancelled_run(exc):  # the run was stopped (infra.stop): the summary above says what was spent
        print(f"interrupted: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if isinstance(exc, GateFailed):
        print(
            f"error: {exc}\nthe run stopped at this gate; nothing was published. The thresholds are the spec's "
            "`gates` (e.g. --set gates.max_quarantined=10); `ultrafeedback status SPEC` lists what failed.",
            file=sys.stderr,
        )
        return EXIT_GATE
    if isinstance(exc, JudgeCircuitOpen):
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_GATE
    from ultrafeedback.infra.budget import BudgetExceeded

    if isinstance(exc, BudgetExceeded):
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BUDGET
    if isinstance(exc, LeaseHeld | LeaseLost):
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_LEASE
    from ultrafeedback.tasks.publish.hub import HubUnavailable, PushFailed

    if isinstance(exc, IngestError | MissingAPIKeyError | StoreUnavailable | HubUnavailable):
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    if isinstance(exc, PushFailed):
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_PUSH
    import traceback

    traceback.print_exception(exc, file=sys.stderr)
    print(
        f"error: {type(exc).__name__}: {exc}\n`ultrafeedback status SPEC` shows what was stored and published.",
        file=sys.stderr,
    )
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
