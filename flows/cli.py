"""The `accountability` command line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from tasks.run import layout
from tasks.run.config import DEFAULT_BACKGROUND, DEFAULT_EXPLAIN, SHAP_ENGINES, RunConfig
from tasks.run.errors import STORAGE_ERRNOS, InputError, StorageError
from tasks.run.serve import REPORTS_AUTH, REPORTS_URL

EXIT_INPUT_ERROR = 2


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default, unless it has none or its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (1-65535)")
    return value


MAX_SEED = 2**32 - 1  # numpy's and scikit-learn's random states


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and {MAX_SEED} (what the splitters take)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="accountability",
        description="Turn a PyTorch model and its data into an auditable PDF compliance report.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="load data, train the reference CNN or MLP (or take your --model), explain it and render a PDF report",
        description="Run the compliance_report Prefect flow: load -> train (or validate --model FILE) -> explain -> "
        "report. "
        "Uses Prefect's local ephemeral server unless PREFECT_API_URL points at a running one.",
        formatter_class=_HelpFormatter,
    )
    run.add_argument("--dataset", default=RunConfig.dataset, metavar="SPEC",
                     help="the data: images from 'digits' (built in), 'cifar10:DIR' (CIFAR-10 python batches in DIR) "
                          "or 'imagefolder:DIR' (one sub-folder of images per class); tables from 'breast-cancer' "
                          "(built in), 'csv:FILE' or 'parquet:FILE' (numeric feature columns, with --label)")
    run.add_argument("--label", metavar="COLUMN",
                     help="csv:/parquet: datasets: the column that holds each row's class")
    run.add_argument("--model", type=Path, metavar="FILE",
                     help="validate this model instead of training one: a torch.export archive (.pt2), TorchScript, "
                          "ONNX (any framework's export) or safetensors weights written by accountability; the "
                          "format is read from the file (pickles are refused). The dataset is its evaluation data")
    run.add_argument("--outputs", choices=("logits", "probabilities"),
                     help="what --model returns (default: detected; rows in [0, 1] summing to 1 are probabilities)")
    run.add_argument("--epochs", type=_positive_int, default=RunConfig.epochs, metavar="N",
                     help="training epochs (not used with --model)")
    run.add_argument("--background", type=_positive_int, default=RunConfig.background, metavar="N",
                     help=f"training rows (images) in the SHAP background (the 'mask') (default: {DEFAULT_BACKGROUND}, "
                          "or every training row when the split has fewer)")
    run.add_argument("--explain", dest="explain_rows", type=_positive_int, default=RunConfig.explain_rows, metavar="N",
                     help="validation rows (images) to explain, every class and misclassified ones included "
                          f"(default: {DEFAULT_EXPLAIN}, or every validation row when the split has fewer)")
    run.add_argument("--seed", type=_seed, default=RunConfig.seed, metavar="N",
                     help="seed for the split, initial weights, shuffling and the choice of rows")
    run.add_argument("--out", type=Path, default=RunConfig.out, metavar="DIR",
                     help="directory under which each run gets its own new sub-directory")
    run.add_argument("--shap-engine", choices=SHAP_ENGINES, default=RunConfig.shap_engine,
                     help="DeepSHAP implementation: 'fast' (this project's exact engine) or 'shap' "
                          "(shap.DeepExplainer itself; same values, several times slower)")
    run.add_argument("--shard-size", type=_positive_int, default=RunConfig.shard_size, metavar="N",
                     help="rows per SHAP shard: each shard is one task, the unit of work spread over Dask workers "
                          "(default: 8 on a CPU, 512 on a GPU)")
    dask = run.add_mutually_exclusive_group()
    dask.add_argument("--dask-workers", type=_positive_int, metavar="N",
                      help="run the SHAP shards on a temporary local Dask cluster of N worker processes")
    dask.add_argument("--dask-address", metavar="ADDRESS",
                      help="run the SHAP shards on an existing Dask scheduler, e.g. tcp://10.0.0.5:8786 (its workers "
                           "need this project installed and the run directory on the same path)")
    run.add_argument("--model-card", type=Path, metavar="FILE",
                     help="YAML model card: owner, intended_use, out_of_scope_uses, limitations, risk_tier "
                          "(also model_name, version, human_oversight, risk_management, post_market_monitoring, "
                          "revalidation_triggers); 'materiality: low|medium|high' sets how deep the review goes and "
                          "'thresholds:' the bounds of the checks; missing fields show as 'not provided'")
    run.add_argument("--protected", metavar="COLUMN[,COLUMN]",
                     help="protected attributes for the fairness section: columns of a csv:/parquet: table (they "
                          "leave the model's features), or of --metadata")
    run.add_argument("--metadata", type=Path, metavar="FILE",
                     help="CSV of protected attributes per row, for images (or any data): a 'file' column naming "
                          "each image or row (e.g. cat/0001.png) and the --protected columns")
    run.add_argument("--keep-protected", action="store_true",
                     help="tables: keep the --protected columns among the model's features")
    run.add_argument("--challenger", type=Path, metavar="FILE",
                     help="your own challenger model (any --model format) to benchmark against, taking the same "
                          "inputs (default: a logistic regression trained on the same split)")
    run.add_argument("--positive-class", metavar="NAME",
                     help="two classes: the class scores, SHAP values and reason codes speak for (default: the second "
                          "label, e.g. 1 of 0/1)")
    run.add_argument("--compare", type=Path, metavar="RUN_DIR",
                     help="an earlier run to compare with (default: the newest intact run of the same dataset "
                          "under --out)")
    run.add_argument("--resume", type=Path, metavar="RUN_DIR",
                     help="finish a run that died, in its own directory and with its recorded parameters (run.json); "
                          "the steps it had finished are reused (Cached), not recomputed")
    run.add_argument("--verbose", action="store_true", help="show Prefect's own log lines on the console")

    own = commands.add_parser(
        "explain-image",
        help="explain your own image file with a finished run's model",
        description="Resize an image to the model's input, print the predicted class with its probability, "
        "and write the SHAP image plot (PNG) and a one-page PDF, explained against the run's background.",
        formatter_class=_HelpFormatter,
    )
    own.add_argument("image", type=Path, metavar="PATH", help="the image file (any format Pillow reads)")
    own.add_argument("--run", type=Path, required=True, metavar="RUN_DIR",
                     help="a run directory written by 'accountability run' (holds model/ and data/)")
    own.add_argument("--out", type=Path, default=Path("explanations"), metavar="DIR",
                     help="where to write <image>-<hash>/shap.png, explanation.pdf and explanation.json")

    verify = commands.add_parser(
        "verify",
        help="re-hash a run directory against its manifest (exit 1 on any change)",
        description="Re-compute the SHA-256 of every file of a run directory, report report.pdf or any other "
        "artifact that changed, went missing or was added since manifest.json was written; exit 1 if any did.",
    )
    verify.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory written by 'accountability run'")
    verify.add_argument("--seal", action="store_true",
                        help="also check report.pdf and manifest.json against the SHA-256 their flow run recorded on "
                        "the Prefect server when it finished (the server at PREFECT_API_URL, or the local one): "
                        "catches a report whose pages were edited and its manifest rewritten by someone who can "
                        "write the files but not the server")

    serve = commands.add_parser(
        "serve-reports",
        help="serve a reports directory read-only over HTTP (what the UI's report links point to)",
        description="Serve the run directories under DIR read-only (GET and HEAD; no hidden files, no symbolic "
        "links) so that a run's report-pdf link opens from the Prefect UI: point the workers' "
        f"{REPORTS_URL} at this address. With {REPORTS_AUTH}=user:password in the environment every request "
        "needs HTTP basic auth; serving beyond 127.0.0.1 needs it. deploy/stack.sh starts one.",
        formatter_class=_HelpFormatter,
    )
    serve.add_argument("reports", type=Path, metavar="DIR", help="the reports directory (the runs' --out)")
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    serve.add_argument("--port", type=_port, default=4201, help="the TCP port to listen on")
    return parser


class _HideWhatTheCliSays(logging.Filter):
    """Keep Prefect's console quiet about what the CLI prints itself, once, as one line: an InputError, a
    StorageError, and a run stopped by Ctrl-C or SIGTERM (Prefect's "Crash detected!" and "Finished in state
    Crashed" for each task and flow). So is its warning that a full or read-only file system kept it from caching
    a step's result: the step's own write meets the same refusal (and the step runs again on --resume). The
    records still reach the Prefect API: the UI shows them."""

    refusals = tuple(os.strerror(code) for code in STORAGE_ERRNOS)
    stops = ("aborted by an interrupt signal", "aborted by a termination signal")

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        message = record.getMessage()
        return not (isinstance(exc, (InputError, StorageError)) or "InputError" in message or "StorageError" in message
                    or "Failed to write result" in message and any(text in message for text in self.refusals)
                    or any(text in message for text in self.stops))


class _HideFontNotice(logging.Filter):
    """WeasyPrint's notice that it subsets fonts with fontTools is not the user's concern."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Using fontTools instead of HarfBuzz")


def _quiet_console(verbose: bool) -> None:
    """Before Prefect is imported: its console shows warnings only (the UI/API still gets every log)."""
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    import prefect.main  # noqa: F401  (sets up Prefect's logging: its console handler sits on the root logger)
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.addFilter(_HideWhatTheCliSays())
    logging.getLogger("weasyprint").addFilter(_HideFontNotice())


def use_prefect(verbose: bool) -> None:
    """Before a command talks to Prefect: its settings for this process, a server at PREFECT_API_URL that
    answers, and a console that shows the product's lines."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # A busy 2-core machine (two runs at once) can take longer than Prefect's 20 s to start its local server.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    check_prefect_api()
    _quiet_console(verbose)


def check_prefect_api() -> None:
    """When PREFECT_API_URL names a server, make sure it answers before any work starts."""
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return
    import httpx

    try:
        response = httpx.get(url.rstrip("/") + "/health", timeout=5.0)
        response.raise_for_status()
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
        raise InputError(
            f"the Prefect API at {url} did not answer ({type(exc).__name__}: {exc}); start that server, "
            "or unset PREFECT_API_URL to run on a local ephemeral server"
        ) from None


def start_server_early() -> threading.Thread | None:
    """Without PREFECT_API_URL a run uses Prefect's local ephemeral server, which takes seconds to start (a
    process of its own, migrating its database). Start it now, in the background, while this process imports
    the flow's modules; the caller joins the thread before the flow asks for the server."""
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        return None
    from prefect.server.api.server import SubprocessASGIServer

    thread = threading.Thread(target=_start_one_at_a_time, args=(SubprocessASGIServer(),),
                              name="prefect-ephemeral-server", daemon=True)
    thread.start()
    return thread


def _start_one_at_a_time(server) -> None:
    """Start Prefect's local server, one process at a time per Prefect home: each server migrates the home's one
    SQLite database as it starts, and two runs started together on a new home raced there ("index ... already
    exists", a server traceback on the console). The second waits for the first's server to answer (seconds)."""
    import fcntl

    from prefect.settings import get_current_settings

    home = Path(get_current_settings().home).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".accountability-server-start.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        server.start()


def run_command(args: argparse.Namespace) -> int:
    if args.resume:
        from tasks.run.resume import resumable_parameters

        recorded = resumable_parameters(args.resume)
        config = RunConfig(**{k: v for k, v in recorded.items() if k in RunConfig.__dataclass_fields__},
                           resume=args.resume)
        print(f"resuming {config.resume} with its recorded parameters")
    else:
        config = RunConfig(dataset=args.dataset, label=args.label, model=args.model, outputs=args.outputs,
                           model_card=args.model_card, compare=args.compare,
                           epochs=args.epochs, background=args.background, explain_rows=args.explain_rows,
                           seed=args.seed, out=args.out, shap_engine=args.shap_engine, shard_size=args.shard_size,
                           protected=args.protected or (), metadata=args.metadata, keep_protected=args.keep_protected,
                           positive_class=args.positive_class, challenger=args.challenger)
    use_prefect(args.verbose)
    from flows.preflight import preflight

    dask = {"dask_address": args.dask_address, "dask_workers": args.dask_workers or 0}
    config = preflight(config, **dask)  # before Prefect starts; the flow's own preflight finds it done
    from tasks.steps.load import check_data

    # The data too, so that data that cannot work is one line in seconds, not after a server start; the
    # run's load step takes this result.
    check_data(config.dataset, config.seed, config.val_fraction, config.background, config.explain_rows, config.label,
               config.model, config.outputs, config.protected, config.metadata, config.keep_protected,
               config.positive_class, config.challenger, keep=True)
    server = start_server_early()
    from flows.compliance_report import compliance_report  # torch, shap, ...: while the server starts

    if server is not None:
        server.join()
    parameters = {k: v for k, v in config.to_json().items() if k not in ("batch_size", "val_fraction")}
    started = time.time()
    # SIGTERM (a supervisor, an IDE's stop button, systemd) stops the run as Ctrl-C does. Prefect's flow engine
    # swaps in its own handler for the run, marks the flow run Crashed, then re-sends the signal to this one.
    signal.signal(signal.SIGTERM, _interrupt)
    # SIGINT too: a shell starts a background job (`accountability run ... &`) with SIGINT ignored, and Python
    # then installs no handler of its own, so Ctrl-C or `kill -INT` would be ignored and the run completes.
    signal.signal(signal.SIGINT, _interrupt)
    try:
        result = compliance_report(**parameters, **dask)
    except KeyboardInterrupt:
        raise Stopped(None, config.resume or _unfinished_run(config.out, started)) from None
    except StorageError as exc:  # a step's file was refused (disk full, read-only): what is written is kept
        raise Stopped(exc, config.resume or _unfinished_run(config.out, started)) from None
    print(f"verdict: {result['verdict']}")
    print(f"validation accuracy: {result['validation_accuracy']:.3f}; "
          f"largest SHAP additivity error: {result['max_additivity_error']:.2e}")
    print(f"checks: {result['checks_failed']} of {result['n_checks']} failed (the findings register is section 5)")
    for name in result["failed"]:
        print(f"  failed: {name}")
    print(f"run directory: {result['run_dir']}")
    print(f"report: {result['pdf']}")
    return 0


class Stopped(Exception):
    """The run stopped before its end: by Ctrl-C or SIGTERM (`error` None), or because its file system refused a
    file (`error`). `run_dir` is what --resume finishes (None: none was created)."""

    def __init__(self, error: StorageError | None, run_dir: Path | None):
        super().__init__(error, run_dir)
        self.error, self.run_dir = error, run_dir

    def line(self) -> str:
        """What the user reads: why, and how to finish the run."""
        if self.error is None:
            return "interrupted" + (f"; finish it with: accountability run --resume {self.run_dir}" if self.run_dir
                                    else " before the run directory was created; nothing to resume")
        finish = (f"; once it has room and can be written, finish the run with: accountability run --resume "
                  f"{self.run_dir}" if self.run_dir else "")
        return f"error: {self.error}{finish}"


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _unfinished_run(out: Path, since: float) -> Path | None:
    """The run directory this process created under `out` (the newest one with run.json and no manifest)."""
    found = [d for d in Path(out).glob("*/") if layout.path(d, "run_record").is_file()
             and not layout.path(d, "manifest").exists() and d.stat().st_mtime >= since - 1]
    return max(found, key=lambda d: d.name, default=None)


def explain_image_command(args: argparse.Namespace) -> int:
    from tasks.report.own_image import explain_image

    result = explain_image(args.image, args.run, args.out)
    print(f"predicted: {result['predicted']} (probability {result['probability']:.3f}); "
          f"largest SHAP additivity error: {result['additivity_error']:.1e}")
    print(f"plot: {result['png']}")
    print(f"report: {result['pdf']}")
    return 0


def verify_command(args: argparse.Namespace) -> int:
    from tasks.run.verify import seal_differences, verify_run

    problems = verify_run(args.run_dir)
    if args.seal:
        use_prefect(verbose=False)
        problems += seal_differences(args.run_dir)
    for problem in problems:
        print(problem)
    sealed = ", sealed" if args.seal else ""
    print(f"{args.run_dir}: {'TAMPERED: ' + str(len(problems)) + ' difference(s)' if problems else 'intact' + sealed}")
    return 1 if problems else 0


def serve_reports_command(args: argparse.Namespace) -> int:
    from tasks.run.serve import serve_reports

    try:
        serve_reports(args.reports, args.host, args.port, os.environ.get(REPORTS_AUTH) or None)
    except KeyboardInterrupt:  # how it is stopped (deploy/stack.sh down): not a failure
        print("accountability serve-reports: stopped", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"run": run_command, "explain-image": explain_image_command, "verify": verify_command,
                "serve-reports": serve_reports_command}
    environment = dict(os.environ)
    try:
        return commands[args.command](args)
    except InputError as exc:
        print(f"accountability: error: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except Stopped as stopped:
        print(f"accountability: {stopped.line()}", file=sys.stderr)
        return 130 if stopped.error is None else 1
    except StorageError as exc:  # explain-image's files
        print(f"accountability: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("accountability: interrupted", file=sys.stderr)
        return 130
    finally:  # the Prefect settings a command puts in the environment are for its own run only: main() called in
        _restore_environment(environment)  # a process (a test, a notebook) must not quiet that process's next runs


def _restore_environment(saved: dict[str, str]) -> None:
    for key in set(os.environ) - set(saved):
        del os.environ[key]
    os.environ.update(saved)


if __name__ == "__main__":
    sys.exit(main())
