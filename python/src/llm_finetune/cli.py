"""``llm-finetune``: one console script, one subcommand per job step.

Each subcommand lives in a light module exposing ``add_arguments(parser)`` and
``run(args) -> int``; heavy imports (torch, transformers, boto3) happen inside ``run``,
so ``llm-finetune --help`` and the validator start fast and the initializer image does
not need the trainer's stack.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .core.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_USAGE
from .core.version import __version__

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "initialize": ("llm_finetune.initializer.command",
                   "Put the pretrained model and the dataset on the volume (the storage initializer init container)."),
    "launch": ("llm_finetune.trainer.launch",
               "torchrun the trainer on this pod's processes and exit with the failed worker's own code."),
    "train": ("llm_finetune.trainer.command",
              "Fine-tune the model (one process; launch runs it under torchrun)."),
    "validate": ("llm_finetune.validate.command",
                 "Check values files (schema + semantic rules) before they reach a cluster."),
    "run-local": ("llm_finetune.local.command",
                  "Render the chart and run its initializer and trainer commands on this machine."),
    "preflight": ("llm_finetune.hooks.preflight",
                  "Pre-install/pre-upgrade hook: config, PyTorchJob API, Secrets and claim."),
    "verify": ("llm_finetune.hooks.verify",
               "helm test hook: check the run's output on the volume and the PyTorchJob's condition."),
    "demo-assets": ("llm_finetune.local.demo_assets",
                    "Build the tiny test model and an instruction dataset (deterministic, no network)."),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-finetune",
        description="Fine-tune LLMs on Kubernetes with a Helm chart; these are the chart's container commands.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        _top_parser().parse_args(argv)  # prints usage or the error, exits 2
        return EXIT_USAGE  # pragma: no cover
    name, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"llm-finetune {name}", description=help_text)
    module.add_arguments(parser)
    args = parser.parse_args(rest)

    from .core.log import setup_logging

    setup_logging()
    code = int(module.run(args) or 0)
    if code in (EXIT_INTERRUPTED, EXIT_TERMINATED):
        from .core.proc import arm_exit_watchdog

        arm_exit_watchdog(code)  # a library thread still blocked in I/O cannot keep the process alive
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
