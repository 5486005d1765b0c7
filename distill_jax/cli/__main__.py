"""``python -m distill_jax.cli COMMAND ...`` = ``distill-jax COMMAND ...``."""

import sys

from distill_jax.cli import main

sys.exit(main())
