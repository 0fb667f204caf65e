"""`python -m stability ...` is the `stability` command."""

import sys

from stability.cli import main

sys.exit(main())
