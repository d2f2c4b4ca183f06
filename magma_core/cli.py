"""`magma <command>`: one CLI for every room.

Rooms register subcommands through the ``magma.commands`` entry-point group, so this module
imports none of them up front. An entry named ``tom`` registers a top-level command; one named
``bench.tracking`` registers ``tracking`` under the ``bench`` group (groups span rooms: the
simulation room adds ``bench.sim``, the ROS room ``bench.ros``). Each entry point is a
``register(subparsers)`` function that adds one parser and sets ``func`` on it.
"""
from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

from magma_core.errors import MagmaError

GROUP_HELP = {
    "bench": "benchmarks that print figures (--json for machines)",
    "dataset": "dataset generation, conversion and inspection",
    "calibrate": "camera intrinsics, hand-eye and checks",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="magma", description="Magma robot stack: Set-of-Mark, Trace-of-Mark, ROS 2.")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for ep in sorted(entry_points(group="magma.commands"), key=lambda e: e.name):
        group, _, leaf = ep.name.partition(".")
        target = top
        if leaf:
            if group not in groups:
                group_parser = top.add_parser(group, help=GROUP_HELP.get(group, group))
                groups[group] = group_parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
            target = groups[group]
        try:
            register = ep.load()
        except ImportError as exc:  # an optional extra is missing: keep the rest of the CLI usable
            _register_unavailable(target, leaf or group, exc)
            continue
        register(target)
    return parser


def _register_unavailable(subparsers: argparse._SubParsersAction, name: str, exc: ImportError) -> None:
    def run(_args: argparse.Namespace) -> int:
        raise MagmaError(f"this command cannot load ({exc}); install the extra it needs, e.g. pip install -e '.[sim,data,ros,model]'")

    p = subparsers.add_parser(name, help=f"(unavailable: {exc.name or exc})", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    name = " ".join(filter(None, [args.command, getattr(args, "subcommand", None)]))
    try:
        return int(args.func(args) or 0)
    except MagmaError as exc:
        print(f"magma {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"magma {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
