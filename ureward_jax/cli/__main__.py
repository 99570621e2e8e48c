"""`python -m ureward_jax.cli`: the `ureward` command."""

import sys

from ureward_jax.cli import main

sys.exit(main())
