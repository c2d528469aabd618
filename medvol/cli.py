"""The ``medvol`` command: one subcommand per verb, each in ``medvol/commands/<verb>.py``.

The CLI only parses, calls one library function and reports. A :class:`MedvolError` (bad input)
becomes one line on stderr and exit status 2, and so does a missing optional package (naming the
extra that installs it). Ctrl-C is exit status 130 with one line saying what the interruption
left: the interrupt's own message where the library gave one (``medvol train`` checkpoints first and
exits 130 on SIGINT, 143 on SIGTERM, 128 + the signal as shells report it; ``medvol preprocess``
says whether the cache changed), else the command module's ``INTERRUPTED`` text, else
:data:`INTERRUPTED`.
"""

from __future__ import annotations

import argparse
import sys

from medvol.commands import COMMANDS, build_parser
from medvol.errors import MedvolError
from medvol.utils import console_safe, missing_extra, missing_package

#: What a Ctrl-C leaves, for a command that says nothing more precise: every medvol write goes to a
#: temporary name that is renamed when complete.
INTERRUPTED = "files finished before it are complete, and nothing half-written is left"


def main(argv: list[str] | None = None) -> int:
    console_safe()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MedvolError as error:
        print(f"medvol {args.command}: error: {error}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:
        # An optional package that a lazy import found missing (medvol/utils.py OPTIONAL_PACKAGES):
        # one line naming the extra. Any other missing module is a bug and keeps its traceback.
        package = missing_package(error)
        if package is None:
            raise
        print(f"medvol {args.command}: error: {missing_extra(package)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        # A training run stopped by a signal says what it saved and carries its own exit status
        # (130 SIGINT, 143 SIGTERM); a plain Ctrl-C elsewhere is 130.
        print(f"medvol {args.command}: {interrupted(args, interrupt)}", file=sys.stderr)
        return int(getattr(interrupt, "exit_code", 130))


def interrupted(args: argparse.Namespace, interrupt: KeyboardInterrupt) -> str:
    """The one line a Ctrl-C prints: what the interruption left (module docstring)."""
    text = str(interrupt).strip()
    if text:
        return text.splitlines()[0]
    module = sys.modules.get(getattr(args.func, "__module__", ""), None)
    return f"interrupted (Ctrl-C); {getattr(module, 'INTERRUPTED', INTERRUPTED)}"


if __name__ == "__main__":
    sys.exit(main())
