"""``python -m ovsam`` = the ``ovsam`` command (handy under ``torchrun -m``)."""

import sys

from ovsam.cli.main import main

sys.exit(main())
