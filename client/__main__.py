"""`python -m client` runs the predserve CLI."""

import sys

from client.cli import main

sys.exit(main())
