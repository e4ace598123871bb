"""``python -m reasondistill`` is the ``reasondistill`` command."""

import sys

from reasondistill.cli import main

sys.exit(main())
