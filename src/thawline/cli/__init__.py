"""Command line: thin argparse subcommands over the Python API. Bad input ends in one line, never a traceback.

`main` (the `thawline` console script, `python -m thawline`) runs a command with the terminal's streams made safe
and its errors as one line; parser builds the flags, options turns them into a config, commands holds the handlers.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any

from thawline.cli.parser import build_parser
from thawline.core.errors import ThawlineError


def _resume_hint(args: argparse.Namespace, interrupt: KeyboardInterrupt) -> str:
    """How to continue after Ctrl-C: the folder to resume when the run (or comparison) had written one."""
    import shlex

    command = getattr(interrupt, "command", None)
    if command is not None and command == args.command:
        return f"; continue with `{interrupt.resume_command}`"  # type: ignore[attr-defined]
    if args.command == "sweep":
        return "; rerun the same command to continue the study"
    if args.command in ("train", "compare") and isinstance(getattr(args, "resume", None), str):
        return f"; continue with `thawline {args.command} --resume {shlex.quote(args.resume)}`"
    if args.command in ("train", "compare"):
        return " before training started; rerun the command"
    return ""


_LINE_BREAKS = re.compile(r"([\n\r\t])")


def terminal_text(text: str) -> str:
    """`text` safe for a terminal: control characters (ESC sequences that set the title, move the cursor, hide or
    recolour text) and bidi overrides as their escapes (files.printable); line breaks, carriage returns (tqdm's bar)
    and tabs stay. Text already escaped is left as it is (its backslashes are not control characters)."""
    from thawline.data.files import printable

    parts = _LINE_BREAKS.split(text)
    try:
        return "".join(part if i % 2 else printable(part) for i, part in enumerate(parts))
    except UnicodeEncodeError:  # a lone surrogate that surrogateescape cannot encode: U+FFFD, as for other bad bytes
        return terminal_text(re.sub("[\ud800-\udfff]", "\ufffd", text))


class _TerminalStream:
    """sys.stdout/sys.stderr for the length of a command: every write goes through `terminal_text`, so no class,
    file or folder name printed anywhere (ours, a library's warning, argparse) reaches the terminal raw. thawline
    itself writes no escape sequences (no colours; its tqdm bars are never nested, so only \r moves the cursor)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(terminal_text(text) if isinstance(text, str) else text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding, buffer: the real stream's
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> int:
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _TerminalStream(sys.stdout), _TerminalStream(sys.stderr)
    try:
        return _main(argv)
    finally:
        # back to the streams main was given (each unless something else replaced it meanwhile)
        if isinstance(sys.stdout, _TerminalStream):
            sys.stdout = streams[0]
        if isinstance(sys.stderr, _TerminalStream):
            sys.stderr = streams[1]


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "compare" and getattr(args, "strategies", None):
        args.strategies = args.strategies.split(",")
    try:
        return args.func(args)
    except ThawlineError as e:
        print(f"thawline: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)  # 2: bad input; 1: a file could not be written (thawline.core.atomic)
    except KeyboardInterrupt as e:
        print(f"thawline: interrupted{_resume_hint(args, e)}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os._exit(0)
    finally:
        if "thawline.training.distributed" in sys.modules:  # leave the torchrun process group cleanly
            sys.modules["thawline.training.distributed"].shutdown()
