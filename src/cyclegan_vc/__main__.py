"""``python -m cyclegan_vc``: the command line, as the ``cyclegan-vc`` script (and for ``torchrun -m``)."""

import sys

from .cli import main

sys.exit(main())
