"""``python -m longgen`` is ``longgen`` (e.g. under ``torchrun ... -m longgen``)."""

import sys

from .cli import main

sys.exit(main())
