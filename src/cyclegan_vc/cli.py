"""The ``cyclegan-vc`` command: each subcommand parses its arguments and calls the library
function of the same name."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .utils import OutsideFailure

if TYPE_CHECKING:
    from .options import ConversionOptions

log = logging.getLogger("cyclegan_vc")


def _cmd_download(args: argparse.Namespace) -> int:
    from .data.download import DEFAULT_BASE_URL, download_vcc2016

    if args.corpus != "vcc2016":
        raise SystemExit(f"unknown corpus {args.corpus!r}; available: vcc2016")
    dest = download_vcc2016(args.dest, base_url=args.base_url or DEFAULT_BASE_URL)
    print(f"VCC 2016 is in {dest}")
    return 0


def _cmd_make_demo_corpus(args: argparse.Namespace) -> int:
    from .data.demo_corpus import make_demo_corpus

    dest = make_demo_corpus(args.dest, n_train=args.train_sentences, n_eval=args.eval_sentences)
    print(f"demo corpus written to {dest}")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from .features import FeatureConfig
    from .prepare import format_summary, prepare

    manifest = prepare(
        args.source,
        args.target,
        args.out,
        source_eval=args.source_eval,
        target_eval=args.target_eval,
        paper_split=args.paper_split,
        f0=args.f0,
        jobs=args.jobs,
        features=FeatureConfig(mcep_dim=args.mcep_dim),
    )
    print(format_summary(manifest))
    print(f"prepared data in {args.out}")
    return 1 if manifest["skipped"] else 0  # every skipped file is listed above


def _cmd_train(args: argparse.Namespace) -> int:
    from .training import train

    summary = train(
        data=args.data,
        run=args.run,
        preset=args.preset,
        iterations=args.iterations,
        minutes=args.minutes,
        resume=args.resume,
        device=args.device,
        overrides=args.set,
    )
    reason = {"completed": "all iterations done", "time_budget": "time budget reached"}.get(summary.stopped, summary.stopped)
    print(f"trained to step {summary.step} ({reason}); model: {summary.model_latest}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from .conversion import convert

    report = convert(
        args.model,
        args.inputs,
        args.out,
        direction=args.direction,
        device=args.device,
        keep_rate=args.keep_rate,
        options=_conversion_options(args, f0_method=args.f0),
        jobs=args.jobs,
        progress=not args.no_progress,
    )
    print(report.summary())
    if report.outputs:
        print(f"output in {args.out}")
    return 0 if report.outputs and not report.failures else 1


def _print_evaluation(run) -> int:
    print(run.table())
    print(f"report: {run.report}")
    for path, problem in run.failures:
        print(f"failed: {path}: {problem}", file=sys.stderr)
    return 1 if run.failures else 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate

    run = evaluate(
        args.model,
        args.source_eval,
        args.target_eval,
        args.out,
        device=args.device,
        source_refs=args.source_refs,
        target_refs=args.target_refs,
        n_examples=args.examples,
        options=_conversion_options(args),
        jobs=args.jobs,
    )
    return _print_evaluation(run)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import demo

    run = demo(
        out=args.out,
        minutes=args.minutes,
        iterations=args.iterations,
        preset=args.preset,
        n_train=args.train_sentences,
        n_eval=args.eval_sentences,
        device=args.device,
        options=_conversion_options(args),
        jobs=args.jobs,
    )
    status = _print_evaluation(run)
    print(f"serve its model: cyclegan-vc serve --models {args.out}")
    return status


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serve import ServerLimits, serve

    limits = ServerLimits(
        max_upload_mb=args.max_upload_mb, max_seconds=args.max_seconds, workers=args.workers, queue=args.queue,
        timeout_s=args.timeout, cached_models=args.cached_models,
    )
    serve(args.models, host=args.host, port=args.port, limits=limits, device=args.device)
    return 0


def _cmd_recipe(args: argparse.Namespace) -> int:
    from .recipe import recipe

    if args.corpus != "vcc2016":
        raise SystemExit(f"unknown recipe {args.corpus!r}; available: vcc2016")
    run = recipe(
        root=args.root,
        source=args.source,
        target=args.target,
        run=args.run,
        preset=args.preset,
        minutes=args.minutes,
        iterations=args.iterations,
        overrides=args.set,
        seed=args.seed,
        cache_dir=args.cache_dir,
        device=args.device,
        options=_conversion_options(args),
        mcep_dim=args.mcep_dim,
        jobs=args.jobs,
    )
    return _print_evaluation(run)


def _smooth_passes(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of passes >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a whole number > 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


PRESETS = "paper | small | debug | vc2 | vc2-small | mask | mask-small"
MCEP_HELP = "mel-cepstrum (coded spectral envelope) dimension (default 24, the paper's)"


def _add_jobs_option(p: argparse.ArgumentParser) -> None:
    """``--jobs``: worker processes of the WORLD analyses and conversions (prepare, convert, evaluate, demo, recipe)."""
    p.add_argument("--jobs", type=_positive_int, default=None,
                   help="worker processes for the WORLD analyses and conversions (default: all cores; 1: in this "
                   "process, which names a file that crashes its worker)")


def _add_conversion_options(p: argparse.ArgumentParser) -> None:
    """The options of the converted speech (:class:`~cyclegan_vc.options.ConversionOptions`), shared by
    convert, evaluate, demo and recipe; :func:`_conversion_options` turns them into one record."""
    from .options import ENERGY_MODES, F0_RANGES, ConversionOptions  # no torch: --help stays quick

    defaults = ConversionOptions()
    p.add_argument("--energy", choices=ENERGY_MODES, default=defaults.energy,
                   help="the output's c0 (frame energy): from the generator (the paper) or the input's, "
                   "mean-variance mapped (default: %(default)s)")
    p.add_argument("--smooth", type=_smooth_passes, default=defaults.smooth, metavar="PASSES",
                   help="passes of a [1, 2, 1]/4 filter along time over the generator's output; removes the "
                   "pixel shuffle's period-2 frame pattern (default: %(default)s, none: the paper)")
    p.add_argument("--f0-range", choices=F0_RANGES, default=defaults.f0_range,
                   help="where F0 is searched in the input: the model's whole f0_floor-f0_ceil, as in preparation, "
                   "or the input speaker's exp(mean -/+ 3 std) of log-F0 (faster harvest; "
                   "default: %(default)s)")


def _conversion_options(args: argparse.Namespace, f0_method: str | None = None) -> ConversionOptions:
    """The one :class:`~cyclegan_vc.options.ConversionOptions` of ``--energy``, ``--smooth``, ``--f0-range``
    (and convert's ``--f0``); a bad value is a :class:`~cyclegan_vc.utils.UserError`."""
    from .options import ConversionOptions
    from .utils import UserError

    try:
        return ConversionOptions(energy=args.energy, smooth=args.smooth, f0_range=args.f0_range, f0_method=f0_method)
    except ValueError as exc:
        raise UserError(f"conversion options: {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cyclegan-vc", description="Non-parallel voice conversion with CycleGAN-VC."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("download", help="download a corpus (vcc2016)")
    p.add_argument("corpus", choices=["vcc2016"])
    p.add_argument("--dest", required=True, type=Path, help="folder to extract into")
    p.add_argument("--base-url", default=None, help="mirror holding vcc2016_training.zip and evaluation_all.zip")
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("make-demo-corpus", help="render the offline two-speaker demo corpus with flite")
    p.add_argument("--dest", required=True, type=Path, help="folder to render into (re-running skips rendered files)")
    p.add_argument("--train-sentences", type=_positive_int, default=None,
                   help="training sentences per voice (default: all of its half of the sentence list)")
    p.add_argument("--eval-sentences", type=_positive_int, default=None,
                   help="parallel evaluation sentences (default: 25)")
    p.set_defaults(func=_cmd_make_demo_corpus)

    p = sub.add_parser("prepare", help="WORLD analysis, cache and per-speaker statistics")
    p.add_argument("--source", required=True, type=Path, help="source speaker's training audio folder (A)")
    p.add_argument("--target", required=True, type=Path, help="target speaker's training audio folder (B)")
    p.add_argument("--out", required=True, type=Path, help="prepared-data directory")
    p.add_argument("--source-eval", type=Path, help="source speaker's held-out audio (parallel to --target-eval)")
    p.add_argument("--target-eval", type=Path, help="target speaker's held-out audio")
    p.add_argument("--paper-split", action="store_true", help="first half of source files, second half of target")
    p.add_argument("--f0", choices=["harvest", "dio"], default=None, help="F0 estimator (default harvest)")
    _add_jobs_option(p)
    p.add_argument("--mcep-dim", type=_positive_int, default=24,
                   help=MCEP_HELP + "; train builds its networks for the prepared data's dimension")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("train", help="train CycleGAN-VC on prepared data")
    p.add_argument("--data", required=True, type=Path, help="prepared-data directory")
    p.add_argument("--run", "--run-dir", dest="run", required=True, type=Path,
                   help="run directory (config, checkpoints, logs); --run-dir under torchrun, whose own --run-path takes --run")
    p.add_argument("--preset", default=None, help=f"{PRESETS} or a YAML file (default: paper; a resumed run keeps its own)")
    p.add_argument("--iterations", type=_positive_int, default=None, help="total iterations (default: the preset's)")
    p.add_argument("--minutes", type=_positive_float, default=None, help="stop cleanly after this many minutes")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest state")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "convert",
        help="convert recordings with a trained model",
        description="Convert audio files with a trained model into WAV files named after the inputs. "
        "Bad inputs are reported and skipped; the exit status is 1 when any input failed.",
    )
    p.add_argument("inputs", nargs="+", help="audio files, folders (recursive; sub-paths are kept) or glob patterns")
    p.add_argument("--model", required=True, type=Path, help="run directory or exported model file")
    p.add_argument("--direction", default="A2B", choices=["A2B", "B2A"], help="A2B: source to target speaker (default)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--f0", choices=["harvest", "dio"], default=None, help="F0 estimator (default: the model's)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--keep-rate", action="store_true", help="write at each input's sample rate (default: the model's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_jobs_option(p)
    _add_conversion_options(p)
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("evaluate", help="objective evaluation against baselines on parallel held-out data")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--source-eval", required=True, type=Path)
    p.add_argument("--target-eval", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--device", default="auto")
    p.add_argument("--source-refs", type=Path, default=None,
                   help="other recordings of speaker A for its speaker embedding (default: the run's training files)")
    p.add_argument("--target-refs", type=Path, default=None, help="the same for speaker B")
    p.add_argument("--examples", type=int, default=3, help="sentences per direction with plots and players")
    _add_jobs_option(p)
    _add_conversion_options(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("demo", help="corpus -> prepare -> train -> convert -> evaluate, offline")
    p.add_argument("--out", type=Path, default=Path("demo-output"))
    p.add_argument("--minutes", type=_positive_float, default=12.0, help="training time budget")
    p.add_argument("--iterations", type=_positive_int, default=None, help="stop after N iterations instead")
    p.add_argument("--preset", default="small")
    p.add_argument("--train-sentences", type=int, default=None,
                   help="training sentences per voice (default: all of the corpus's)")
    p.add_argument("--eval-sentences", type=int, default=None,
                   help="held-out parallel sentences (default: all of the corpus's)")
    p.add_argument("--device", default="auto")
    _add_jobs_option(p)
    _add_conversion_options(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("recipe", help="the paper's protocol on a corpus (vcc2016)")
    p.add_argument("corpus", choices=["vcc2016"])
    p.add_argument("--root", required=True, type=Path, help="folder holding vcc2016_training/ and evaluation_all/")
    p.add_argument("--source", default="SF1")
    p.add_argument("--target", default="TF2")
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("--preset", default="small")
    p.add_argument("--minutes", type=_positive_float, default=None, help="training time budget")
    p.add_argument("--iterations", type=_positive_int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--seed", type=int, default=None, help="training seed (default: the preset's)")
    p.add_argument("--cache-dir", type=Path, default=None, help="shared feature cache (reused across pairs)")
    p.add_argument("--mcep-dim", type=_positive_int, default=None, help=MCEP_HELP + "; the model's input is set to match")
    p.add_argument("--device", default="auto")
    _add_jobs_option(p)
    _add_conversion_options(p)
    p.set_defaults(func=_cmd_recipe)

    p = sub.add_parser("serve", help="a web page and HTTP API converting with the trained models under a folder",
                       description="Serve every trained model (run folders, exported model files) under --models: "
                       "a page at http://HOST:PORT/ and an HTTP API (schema at /openapi.json). docs/serve.md.")
    p.add_argument("--models", required=True, type=Path, help="folder searched for run folders and exported model files")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    from .serve.limits import ServerLimits  # no torch: --help stays quick

    limits = ServerLimits()
    p.add_argument("--workers", type=_positive_int, default=limits.workers, help="conversions at a time (default: %(default)s)")
    p.add_argument("--queue", type=int, default=limits.queue, help="conversions that may wait; more get 503 (default: %(default)s)")
    p.add_argument("--max-upload-mb", type=float, default=limits.max_upload_mb, help="largest upload in MB (default: %(default)s)")
    p.add_argument("--max-seconds", type=float, default=limits.max_seconds, help="longest recording in seconds (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=limits.timeout_s, help="seconds a conversion may take (default: %(default)s)")
    p.add_argument("--cached-models", type=_positive_int, default=limits.cached_models,
                   help="loaded models kept in memory (default: %(default)s)")
    p.set_defaults(func=_cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    try:
        return args.func(args)
    except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM during training: 128 + the signal, as a shell says
        print(f"cyclegan-vc {args.command}: {exc or 'interrupted'}", file=sys.stderr)
        return 128 + int(getattr(exc, "signum", signal.SIGINT))
    except _USER_MISTAKES as exc:
        log.debug("error", exc_info=True)
        print(f"cyclegan-vc {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, OutsideFailure, FloatingPointError) as exc:  # a full disk, the network, killed workers, NaN
        log.debug("error", exc_info=True)
        print(f"cyclegan-vc {args.command}: failed: {_describe(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # a fault of the toolkit: say so, and where the traceback is
        log.debug("error", exc_info=True)
        print(
            f"cyclegan-vc {args.command}: internal error: {type(exc).__name__}: {exc} "
            "(run again with --verbose for the traceback)",
            file=sys.stderr,
        )
        return 1


def _describe(exc: BaseException) -> str:
    """An error's line: an ``OSError`` as "FILE: what" rather than "[Errno 28] ... 'FILE'"."""
    if not isinstance(exc, OSError) or not exc.strerror:
        return str(exc)
    if exc.filename is None or str(exc.filename) in exc.strerror:
        return exc.strerror
    return f"{exc.filename}: {exc.strerror}"


#: What the user can fix (a path, a flag, a folder's contents): one line, exit status 2. ``ValueError``
#: covers :class:`~cyclegan_vc.utils.UserError`, :class:`~cyclegan_vc.config.ConfigError` and
#: :class:`~cyclegan_vc.audio.AudioError`.
_USER_MISTAKES = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)

if __name__ == "__main__":
    sys.exit(main())
