"""``python -m vardecouple …`` (what ``accelerate launch -m vardecouple`` runs)."""

import sys

from vardecouple.cli import main

sys.exit(main())
