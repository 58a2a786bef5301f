"""``python -m prsm_edge`` runs the CLI."""

import sys

from prsm_edge.cli import main

sys.exit(main())
