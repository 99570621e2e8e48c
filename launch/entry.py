"""How every program in launch/ starts: absl's `app.run` with the project's error boundary (`ureward_jax.errors`).

A command line absl cannot take (an unknown flag, a config file that does not load, a misspelt or mistyped
`--config.` override) is one `error:` line and exit status 2; a user error inside the program is one line and
status 1, Ctrl-C "interrupted; re-run to resume" and 130.
"""

import sys
from typing import Callable, Sequence

from absl import app, flags

from ureward_jax import errors

# How ml_collections' config flags fail, when their value is first read: a config file that does not load (OSError),
# an override of a key the config lacks (KeyError, AttributeError) or with a value of the wrong type.
_CONFIG_FAILURES = (OSError, KeyError, AttributeError, TypeError, ValueError)


def _message(error: BaseException) -> str:
  """The innermost message of `error` on one line (config flags wrap a file's failure and nest a key's)."""
  while error.__cause__ is not None:
    error = error.__cause__
  if (described := errors.describe(error)) is not None:
    return described
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  text = error.args[0] if len(error.args) == 1 and isinstance(error.args[0], str) else str(error)
  return " ".join(text.split())


def _parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's parsing, then every flag's value read once, so that a config flag's failure shows here, as a usage
  error, rather than inside the program."""
  try:
    rest = flags.FLAGS(argv)
    for name in list(flags.FLAGS):
      # A config file that failed to load reads as a stand-in raising the failure on its first attribute access.
      getattr(flags.FLAGS[name].value, "to_dict", None)
  except (flags.Error, *_CONFIG_FAILURES) as e:
    print(f"error: {_message(e)} (pass --helpshort for this program's flags)", file=sys.stderr)
    raise SystemExit(errors.USAGE) from None
  return rest


def run(main: Callable[[list[str]], None]) -> None:
  """Parse the flags and run `main(argv)` under `errors.guard`."""
  app.run(lambda argv: errors.guard(lambda: main(argv)), flags_parser=_parse_flags)
