"""`python -m cerby_exporter`, the same as the `cerby-exporter` command."""

import sys

from cerby_exporter.cli import main

sys.exit(main())
