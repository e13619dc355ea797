"""``python -m gtcrec.swap``: the ``gtcrec-swap`` command."""
import sys

from gtcrec.swap.cli import main

sys.exit(main())
