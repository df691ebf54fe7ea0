"""``python -m edgeprune``: the command line, as ``torchrun ... -m edgeprune prune ...`` needs."""
import sys

from edgeprune.cli import main

sys.exit(main())
