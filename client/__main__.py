"""`python -m client` runs the predserve CLI."""

import sys

from predserve.client.cli import main

sys.exit(main())
