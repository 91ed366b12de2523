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
checked `type=` of every numeric and row-range option, the test of whether a name means a local
path or a hub id, how files are written (whole or not at all, with ordinary permissions), and
how JSONL files are read (a bad line named by file and line). And `SampleLog`, an output folder
that a run of hours fills batch by batch and the same command run again continues (eval.py's).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable

DEBUG_FLAG = "--debug"


class UsageError(ValueError):
    """Bad input the user can fix (an option, a file, a record); exit code 2."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help with every option's default beside it, except where there is none to show: a flag
    is off unless given (argparse would show `--no-std-scale ... (default: True)`, the setting it
    turns off), a required option has no default (argparse: `(default: None)`), and a help text
    may say it in words already (`(default: the same as --model)`)."""

    def _get_help_string(self, action):
        if action.nargs == 0 or action.required or "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with its errors on one line (argparse prints the whole usage first,
    several lines that push the one naming the option at fault away from the eye), and the
    defaults in --help (HelpFormatter)."""

    def __init__(self, *args, formatter_class=HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

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
    exists (`runs/stage1` with runs/ present is a typo, not a hub repository called `runs`).
    model.py keeps its own copy (it imports nothing of the project); tests/test_cli.py holds both
    to one table."""
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


def jsonl_records(path: Path, last_may_be_torn: bool = False):
    """(line number, line, record) for each non-blank line of a JSONL file. A line that is not
    valid JSON is a ValueError naming the file and line, except the last one when
    `last_may_be_torn`: a run killed while appending a record leaves that line cut short, and
    it is skipped. (Data files get no such leniency: a bad line there is the user's to fix.)"""
    # "\n" only: a JSON string may hold U+2028 or U+0085 unescaped, where splitlines() would cut
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    last = max((number for number, line in enumerate(lines, 1) if line.strip()), default=0)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if last_may_be_torn and number == last:
                return
            raise ValueError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        yield number, line, record


def write_atomic(path: Path, text: str):
    """Write to a temporary name in the same folder, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        make_readable(tmp)  # mkstemp makes it 0600; the file should look like any other we write
        os.replace(tmp, path)
    except BaseException:  # disk full, Ctrl-C: no stray temporary file left behind
        Path(tmp).unlink(missing_ok=True)
        raise


# -----------------------------------------------------------------------------
# Checked command-line values, the `type=` of every numeric option of every script: a bad value
# stops argparse at once ("argument --top-p: expected a number in (0, 1], got '1.5'", exit 2)
# instead of failing, or silently misbehaving, after the model has loaded.


class OptionValueError(argparse.ArgumentTypeError, ValueError):
    """A bad option value: argparse reports it with the option's name; other callers see a ValueError."""


def bounded(kind: type = float, low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False):
    """An argparse `type=` that converts with `kind` and accepts values in the given range."""
    what = "an integer" if kind is int else "a number"
    if low is not None and high is not None:
        valid = f"{what} in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        valid = f"{what} {'>' if low_open else '>='} {low:g}"
    else:
        valid = f"{what} {'<' if high_open else '<='} {high:g}"

    def check(text: str):
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise OptionValueError(f"expected {valid}, got {text!r}") from None
        ok = value == value and abs(value) != math.inf  # no nan or inf
        ok = ok and (low is None or (value > low if low_open else value >= low))
        ok = ok and (high is None or (value < high if high_open else value <= high))
        if not ok:
            raise OptionValueError(f"expected {valid}, got {text!r}")
        return value

    check.__name__ = valid  # argparse names the type with it in its own messages
    return check


positive_int = bounded(int, 1)
nonnegative_int = bounded(int, 0)
positive_float = bounded(float, 0, low_open=True)
nonnegative_float = bounded(float, 0)
probability = bounded(float, 0, 1)                  # mask probabilities, ratios
nucleus = bounded(float, 0, 1, low_open=True)       # top-p: 0 would keep no token
dropout = bounded(float, 0, 1, high_open=True)      # 1 would drop everything


def row_slice(text: str | None) -> slice | None:
    """`START:END` (a Python slice of records, either side optional: "0:2000", "2000:") -> slice;
    None or "" -> None (every row). Rejects anything else, a zero or negative step, and a range
    that is empty by construction (END <= START, both counted from the same end)."""
    if not text:
        return None
    parts = str(text).split(":")
    if len(parts) not in (2, 3):
        raise OptionValueError(f"expected START:END (a Python slice, e.g. 0:2000 or 2000:), got {text!r}")
    try:
        start, end, *step = (int(p) if p.strip() else None for p in parts)
    except ValueError:
        raise OptionValueError(f"expected START:END with integer START and END, got {text!r}") from None
    step = step[0] if step else None
    if step is not None and step < 1:
        raise OptionValueError(f"expected a step >= 1 in START:END:STEP, got {text!r}")
    if start is not None and end is not None and (start < 0) == (end < 0) and end <= start:
        raise OptionValueError(f"expected END > START in START:END, got {text!r} (no rows)")
    return slice(start, end, step)


def rows_option(text: str) -> str:
    """argparse `type=` for --rows: checks the slice (row_slice) and keeps the text."""
    row_slice(text)
    return text


# -----------------------------------------------------------------------------
# Output that survives an interruption: samples.jsonl grows batch by batch, and a rerun of the
# same command continues from it (settings.json says which command made it)


class SampleLog:
    """out/samples.jsonl, one record per answered question (`{"index": i, ...}`, i counted from 0
    in --data), and out/settings.json, what made them. The folder is checked when the log is
    made: a bad --out should fail now, not after hours of generation."""

    def __init__(self, out: Path):
        self.out, self.path, self.settings_path = out, out / "samples.jsonl", out / "settings.json"
        try:
            out.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=out):
                pass
        except OSError as e:
            raise UsageError(f"--out {out}: cannot write there ({e.strerror or e})") from None

    def resume(self, settings: dict, same_question: Callable[[int, dict], bool]) -> dict[int, dict]:
        """The records an earlier run of this command left, by index; settings.json is then
        written and samples.jsonl rewritten with those records only. Refuses records made with
        other settings (`settings` names the --data the questions come from), or for other
        questions: `same_question(i, record)` says whether the record answers this run's
        question i, and raises IndexError for an i past its last (a smaller --limit: the record
        is left out). Drops a last line cut short."""
        path, settings_path, out = self.path, self.settings_path, self.out
        lines = path.read_text(encoding="utf-8").split("\n") if path.is_file() else []
        lines = lines[:-1]  # the piece after the last newline: empty, or a line the interruption cut short
        done = {}
        if lines:
            if not settings_path.is_file():
                raise UsageError(f"{path}: samples without settings.json (an older eval.py?); "
                                 f"delete them or choose another --out")
            try:
                before = json.loads(settings_path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{settings_path}: not valid JSON ({e.msg})") from None
            changed = [key for key in settings if before.get(key) != settings[key]]
            if changed:
                key = changed[0]
                what = ("the weights files of --model changed" if key == "weights"
                        else f"{key} was {before.get(key)!r}, now {settings[key]!r}")
                raise UsageError(f"{path}: made by another run ({what}); delete {out} or choose another --out")
        for line_no, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
                i = record["index"]
                if not isinstance(i, int) or i < 0:
                    raise TypeError("index")
                ok = same_question(i, record)
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{path}:{line_no}: not a sample record; delete the file to start again") from None
            except IndexError:
                continue  # a question past this run's --limit
            if not ok:
                raise UsageError(f"{path}:{line_no}: question {i + 1} is not the one in --data {settings['data']}; "
                                 f"delete {out} or choose another --out")
            done[i] = record
        write_atomic(settings_path, json.dumps(settings, indent=2) + "\n")
        self.write_all(done.values())  # without a cut line
        return done

    def append(self, records: list[dict]):
        """One batch at a time, flushed to disk: an interruption loses at most the batch in flight."""
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())

    def write_all(self, records: Iterable[dict]):
        """The file rewritten whole (write_atomic) with these records only: what resume kept, or at
        the end every record in question order."""
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in records))
