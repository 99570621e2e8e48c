"""User errors, and the one boundary every entry point (`ureward`, `launch/*`, `converters/*`) runs its work under.

A user error is a problem the person running the command fixes: a path, an option, a config value, a file's
content. The library raises `UserError` (or a subclass: `ConversionError`, `BadInput`, ...) for every refusal it
makes on purpose, with a message naming the thing and what to do. The file system's own refusals (a missing input,
a folder that cannot be written, a full disk) are user errors too. `guard` turns either into one `error: ...` line on
stderr and exit status 1, Ctrl-C into "interrupted; re-run to resume" and status 130; anything else is a programming
error and keeps its traceback.

Batch jobs (judging rows, building pairs, generating candidates, loading training records) isolate their rows
instead: whatever one row raises while it is read or prepared becomes that row's error (`row_error`), and the others
go on.
"""

from __future__ import annotations

import errno
import sys
from typing import Callable

INTERRUPTED = "interrupted; re-run to resume"
# Exit statuses: a user error; a bad command line (argparse's and absl's own); Ctrl-C (128 + SIGINT, as shells say).
USER_ERROR, USAGE, INTERRUPT = 1, 2, 130
# What to do about the file system's refusals, by errno.
_FILE_HINTS = {errno.ENOENT: "check the path", errno.EACCES: "check its permissions",
               errno.EPERM: "check its permissions", errno.EROFS: "the file system is read-only",
               errno.EISDIR: "a file was expected, not a folder", errno.ENOTDIR: "a folder was expected, not a file",
               errno.EEXIST: "choose another path", errno.ENOSPC: "free some space or write elsewhere",
               errno.EDQUOT: "free some space or write elsewhere", errno.ENAMETOOLONG: "choose a shorter path"}


class UserError(ValueError):
  """A problem the user fixes; its message names the thing and what to do. (A ValueError, so code that already
  refuses values with ValueError catches it.)"""


def describe(error: BaseException) -> str | None:
  """The one-line message of a user error, None for any other exception."""
  if isinstance(error, UserError):
    return str(error)
  if isinstance(error, (FileNotFoundError, FileExistsError)) and error.errno is None:   # raised with a message here
    return str(error)
  if isinstance(error, OSError) and error.errno in _FILE_HINTS and error.filename is not None:
    names = str(error.filename) + (f" → {error.filename2}" if error.filename2 is not None else "")
    return f"{names}: {error.strerror} ({_FILE_HINTS[error.errno]})"
  if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
    return f"{error.strerror} ({_FILE_HINTS[error.errno]})"
  return None


def row_error(error: Exception) -> str:
  """The message a batch job records for one row that failed: a user error's own message, any other exception's
  type and message ("DecompressionBombError: ..."), since the type is what names an unexpected failure."""
  return describe(error) or f"{type(error).__name__}: {error}"


def guard(main: Callable[[], int | None]) -> int:
  """Run `main`; its return value is the exit status (None: 0). A user error becomes SystemExit("error: ..."),
  which Python prints as that one line with status 1 (callers in Python see the message); Ctrl-C prints INTERRUPTED
  and exits with 130; other exceptions propagate with their tracebacks."""
  try:
    return main() or 0
  except KeyboardInterrupt:   # what is on disk stays for a re-run to resume
    print(INTERRUPTED, file=sys.stderr)
    raise SystemExit(INTERRUPT) from None
  except Exception as e:   # noqa: BLE001 — sorted below: user errors end here, the rest is re-raised
    message = describe(e)
    if message is None:
      raise
    raise SystemExit("error: " + " ".join(line.strip() for line in message.splitlines())) from None   # one line

