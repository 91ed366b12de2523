"""
How every script of this project meets the shell: one line on a bad input, not a traceback.

A bad input (a missing file, a broken JSONL line, an option out of range, a corrupt checkpoint)
is the user's to fix, and the fix needs the file, line, field or option at fault. Our error
messages name it; the thirty lines of traceback around them only bury it. So each script ends
with `cli.run(main)`, which turns the errors we expect into

    error: runs/tiny/world/test.jsonl:17: not valid JSON (Expecting value)

on stderr and an exit code: 2 for bad input or usage (argparse's own code for a bad option), 1
for a failure of the run itself (out of memory, disk full), 130 for Ctrl-C (as shells report it;
one `interrupted` line, saying how to continue where the script knows).
Anything else is a bug in this code and keeps its traceback. `--debug` on the command line, or
BRIDGE_DEBUG=1 in the environment, lets every error through with its traceback. Tests call the
scripts' main() directly and see the exceptions themselves.

Also here, because every script needs them: the argparse parser whose errors take one line, the
test of whether a name means a local path or a hub id, and the permissions of written files.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

DEBUG_FLAG = "--debug"


class UsageError(ValueError):
    """Bad input the user can fix (an option, a file, a record); exit code 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with its errors on one line: argparse prints the whole usage first,
    several lines that push the one naming the option at fault away from the eye."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


# Errors that mean "the input is wrong"; other OSErrors (disk full, permission denied) and
# RuntimeErrors (CUDA out of memory) mean the run failed.
BAD_INPUT = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError)
RUN_FAILURE = (OSError, RuntimeError, MemoryError)


def _one_line(error: BaseException) -> str:
    """The first line of the message: library errors (torch's) can run to many lines."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if len(lines) > 1:
        text += " ..."
    return text


# What to say on Ctrl-C, for a script that knows more than "interrupted" (a training stage: which
# checkpoint --resume continues from). Set with on_interrupt() once the script knows it.
_interrupt_hint: Callable[[], str] | None = None


def on_interrupt(hint: Callable[[], str] | None) -> None:
    """Have run() add hint() to its `interrupted` line when Ctrl-C stops the script."""
    global _interrupt_hint
    _interrupt_hint = hint


def run(main: Callable[[], object]) -> None:
    """Call main() with sys.argv (less --debug); known errors become one `error:` line and an exit code."""
    debug = DEBUG_FLAG in sys.argv[1:] or os.environ.get("BRIDGE_DEBUG") == "1"
    sys.argv = [arg for arg in sys.argv if arg != DEBUG_FLAG]
    if debug:
        main()
        return
    try:
        main()
    except KeyboardInterrupt as e:  # not an error; its message, when there is one, says how to continue
        hint = _one_line(e) if str(e) else (_interrupt_hint() if _interrupt_hint else "")
        print("interrupted" + (f": {hint}" if hint else ""), file=sys.stderr)
        sys.exit(130)
    except SystemExit as e:
        if not isinstance(e.code, str):  # sys.exit(n), argparse's exits: already reported
            raise
        _exit(2, e.code)  # our scripts' refusals, `raise SystemExit("... pass --resume ...")`
    except BAD_INPUT as e:
        _exit(2, _one_line(e) or type(e).__name__)
    except RUN_FAILURE as e:
        _exit(1, f"{type(e).__name__}: {_one_line(e)} (run again with {DEBUG_FLAG} for the traceback)")


def _exit(code: int, message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def looks_like_path(name: str) -> bool:
    """Whether a name that is not on disk was meant as a local path rather than a hub id
    (`org/name`): it starts with ./ ../ / or ~, has more than one slash, or names a folder that
    exists (`runs/stage1` with runs/ present is a typo, not a hub repository called `runs`)."""
    name = str(name)
    if name.startswith(("./", "../", "/", "~")) or name in (".", ".."):
        return True
    separators = name.count("/") + (name.count(os.sep) if os.sep != "/" else 0)
    if separators != 1:
        return True
    return Path(name).parent.is_dir()


def current_umask() -> int:
    """The process umask (os.umask can only be read by setting it, so set it back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_readable(path: str | os.PathLike, folder: bool = False):
    """Give a file made by tempfile (always 0600, or 0700 for a folder) the permissions an ordinary
    open() would have given it, 0666 (0777) less the umask, before it is renamed into place."""
    os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())
