"""The ``caap`` console script: ``caap explain`` (caap.cli), ``caap bench`` (analysis.bench) and
``caap figure`` (analysis.figure_cli, when installed). Lives in the top layer because ``bench`` and
``figure`` need ``analysis``. User errors print one line on stderr and exit with status 2."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys


def _figure_cli():
    try:
        return importlib.import_module("analysis.figure_cli")
    except ModuleNotFoundError as err:
        if err.name == "analysis.figure_cli":
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    from analysis import bench
    from caap import cli as caap_cli

    parser = caap_cli.build_parser()  # holds the "explain" subcommand
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    bench.add_parser(sub)
    figure = _figure_cli()
    if figure is not None:
        figure.add_parser(sub)  # interface: analysis.figure_cli.add_parser(sub), .run(args) -> int
    importlib.import_module("analysis.view_cli").add_parser(sub)  # caap view: the interactive HTML viewer
    return parser


def main(argv: list[str] | None = None) -> int:
    from analysis import bench
    from caap import cli as caap_cli

    logging.basicConfig(level=logging.WARNING)
    try:
        args = build_parser().parse_args(argv)
        if args.command == "bench":
            return bench.run(args)
        if args.command == "figure":
            return _figure_cli().run(args)
        if args.command == "view":
            return importlib.import_module("analysis.view_cli").run(args)
        return caap_cli.explain(args)
    except (bench.UserError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as err:
        print("caap: " + " ".join(str(err).splitlines()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, the shell's 128 + SIGINT; written rows stay resumable
        print("caap: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
