"""`mnist-cnn`, also `python -m mnist_cnn`: the commands users run by hand beside the pipeline,
whose stages `dvc repro` runs.

A command's module is imported only when it runs: `--help`, and the commands that need no
TensorFlow, start in a moment.
"""

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from mnist_cnn.runner import run_command


def predict(arguments: argparse.Namespace) -> int:
    from mnist_cnn.predict import predict

    return predict(arguments.images, arguments.model, arguments.json)


def report(arguments: argparse.Namespace) -> None:
    from mnist_cnn.report import write_report

    write_report(arguments.base, arguments.output)


def push_run_cache(arguments: argparse.Namespace) -> None:
    from mnist_cnn.run_cache import push

    push(arguments.remote)


def verify(arguments: argparse.Namespace) -> None:
    from mnist_cnn.lock import verify

    verify(arguments.cache)


def offline_plots(arguments: argparse.Namespace) -> None:
    from mnist_cnn.vega import TEMPLATE, write_template

    write_template(arguments.output or TEMPLATE)


def sweep(arguments: argparse.Namespace) -> int:
    from mnist_cnn.sweep import sweep

    return sweep(arguments.set_param, arguments.scheduler, arguments.yes)


def program_name() -> str:
    """What the user typed: `mnist-cnn`, or `python -m mnist_cnn`."""
    typed = Path(sys.argv[0]).name
    return "python -m mnist_cnn" if typed in ("__main__.py", "-c", "") else typed


def command(
    commands: argparse._SubParsersAction, name: str, run_it: Callable, summary: str, text: str
) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name,
        help=summary,
        description=f"{summary[0].upper()}{summary[1:]}.\n\n{text}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run_it, name=name)
    return parser


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog=program_name(),
        description="Commands beside the MNIST pipeline (`dvc repro` runs the stages). "
        "Run from the project's root; predict with --model runs anywhere.",
    )
    commands = top.add_subparsers(title="commands", required=True, metavar="COMMAND")

    sub = command(
        commands,
        "predict",
        predict,
        "name the digit in your own images",
        "Photos, scans or drawings, any size and colour: one line per image, IMAGE: DIGIT\n"
        "(PROBABILITY %). An unreadable image gets one line on stderr and exit status 1;\n"
        "the others are still predicted.",
    )
    sub.add_argument("images", nargs="+", type=Path, help="PNG, JPEG, BMP, GIF or TIFF files")
    sub.add_argument(
        "--model", type=Path, help="a .keras model (default: paths.model in ./dvc.yaml)"
    )
    sub.add_argument("--json", action="store_true", help="print a JSON list instead")

    sub = command(
        commands,
        "report",
        report,
        "write a Markdown report of a change against a base revision",
        "The params that changed, the test metrics with their deltas, and the plots of both\n"
        "revisions as PNG files in a folder beside the report (report_files/ for report.md).\n"
        "Needs no terminal and no network.",
    )
    sub.add_argument("--base", required=True, help="the revision to compare with, e.g. main")
    sub.add_argument(
        "-o", "--output", type=Path, default=Path("report.md"), help="default: report.md"
    )

    sub = command(
        commands,
        "push-run-cache",
        push_run_cache,
        "push DVC's run-cache with every file its records name",
        "`dvc push --run-cache` sends the run records but not the files they name; this sends\n"
        "both, so that a teammate's `dvc repro --pull` finds every stage run here.",
    )
    sub.add_argument("-r", "--remote", help="a DVC remote (default: the default remote)")

    sub = command(
        commands,
        "verify",
        verify,
        "check that every output holds the bytes dvc.lock records",
        "DVC trusts its cache's names: an object damaged there is checked out as it is and\n"
        "`dvc status` still says up to date. This hashes every output dvc.lock records again,\n"
        "prints a line for each that differs and exits 1; run it before deploying a model.",
    )
    sub.add_argument(
        "--cache",
        action="store_true",
        help="check the outputs' objects in DVC's cache as well",
    )

    sub = command(
        commands,
        "sweep",
        sweep,
        "run a grid of experiments on a Dask cluster, each a DVC experiment",
        "Every combination of the -S values (dvc exp run --queue's grammar) is one trial: a\n"
        "clone of this commit from origin, `dvc exp run --pull`, then dvc push, push-run-cache\n"
        "and dvc exp push. The experiments are pulled here at the end and shown in a table.\n"
        "A trial already on origin is skipped. Exit status 1 if any trial failed. Ctrl-C\n"
        "stops every trial not done, and publishes nothing of them.",
    )
    sub.add_argument(
        "-S",
        "--set-param",
        action="append",
        required=True,
        metavar="KEY=VALUES",
        help="e.g. train.learning_rate=0.005,0.01 (repeat for more keys)",
    )
    sub.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="a running Dask scheduler, tcp://HOST:8786 (default: a cluster on this machine, "
        "one single-threaded worker per core)",
    )
    sub.add_argument("--yes", action="store_true", help="run a grid of more than 16 trials")

    sub = command(
        commands,
        "offline-plots",
        offline_plots,
        "write the page template that makes dvc plots show work offline",
        "Vega, Vega-Lite and Vega-Embed inlined from vl-convert-python's bundle, into\n"
        ".dvc/offline_plots.html (plots.html_template in .dvc/config).",
    )
    sub.add_argument(
        "-o", "--output", type=Path, help="default: .dvc/offline_plots.html"
    )
    return top


def main(argv: list[str] | None = None) -> int:
    arguments = parser().parse_args(argv)
    return run_command(lambda: arguments.run(arguments), arguments.name)
