"""``python -m icmix``: the same as the ``icmix`` command."""

import sys

from icmix.cli import main

sys.exit(main())
