"""The ``orderdp-dali`` command: one entry point, one module per sub-command.

Sub-commands are imported lazily so that ``orderdp-dali make-data`` does not pay for
importing torch and DALI.
"""
from __future__ import annotations

import importlib
import sys
from typing import Optional, Sequence

# sub-command -> (module exposing ``main(argv) -> int``, one-line help)
COMMANDS = {
    "train": ("orderdp_dali.train", "train a classifier with a pruning policy (DDP via torchrun)"),
    "bench": ("orderdp_dali.bench.run", "compare policies end to end, taking turns epoch by epoch; write a report"),
    "make-data": ("orderdp_dali.make_data", "generate an ImageNet-layout folder of JPEGs"),
    "check-data": ("orderdp_dali.check_data", "find unreadable or undecodable images in a dataset"),
    "make-shards": ("orderdp_dali.tar_shards", "convert class-folder splits into tar shards"),
}


def _usage() -> str:
    lines = ["usage: orderdp-dali COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'orderdp-dali COMMAND --help' for the options of one command."]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"orderdp-dali: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
