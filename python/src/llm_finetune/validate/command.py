"""``llm-finetune validate``: check values (or a rendered config) before they reach a cluster.

Exit codes: 0 valid (warnings allowed), 1 invalid or bad input (missing file, bad YAML,
bad --set), 2 usage. Every problem is printed at once, one per line, as
``path.to.field: what is wrong — how to fix``; ``--output json`` prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..core.errors import EXIT_OK, EXIT_USER_ERROR, guarded
from ..core.problems import ERROR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--values", action="append", default=[], metavar="FILE",
                        help="values file, as for helm (repeatable; later files win)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VAL",
                        help="set values as helm --set does (repeatable): a.b=c,list[0]=x,list={x,y}")
    parser.add_argument("--set-string", action="append", default=[], metavar="KEY=VAL",
                        help="as --set, every value a string")
    parser.add_argument("--set-json", action="append", default=[], metavar="KEY=JSON",
                        help="as --set, every value JSON")
    parser.add_argument("--chart", metavar="DIR", default=None,
                        help="chart folder with values.yaml and values.schema.json (default: this repo's chart/, "
                             "$LLM_FINETUNE_CHART, or the copy shipped in the package)")
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="validate a rendered config.yaml (the job ConfigMap's) instead of values")
    parser.add_argument("--output", "-o", choices=("text", "json"), default="text", help="report format")


def print_report(report, output: str, file=None) -> None:
    if output == "json":
        print(json.dumps(report.to_dict(), indent=2), file=file)
        return
    for p in report.problems:
        prefix = "" if p.severity == ERROR else f"{p.severity}: "
        print(prefix + p.render(), file=file)
    print(report.summary(), file=file)


@guarded("validate")
def run(args: argparse.Namespace) -> int:
    from .check import validate_config_file, validate_files

    if args.config:
        if args.values or args.set or args.set_string or args.set_json:
            print("llm-finetune validate: --config cannot be combined with -f/--set", file=sys.stderr)
            return EXIT_USER_ERROR
        report = validate_config_file(args.config, args.chart)
    else:
        # Helm's order: --set-json, then --set, then --set-string.
        sets = ([("json", s) for s in args.set_json] + [("typed", s) for s in args.set]
                + [("string", s) for s in args.set_string])
        report = validate_files(args.values, sets, args.chart)
    print_report(report, args.output)
    return EXIT_OK if report.ok else EXIT_USER_ERROR
