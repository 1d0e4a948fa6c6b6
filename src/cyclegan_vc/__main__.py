"""``python -m cyclegan_vc``: the command line, as the ``cyclegan-vc`` script (and for ``torchrun -m``)."""

import sys

from .cli import main

if __name__ == "__main__":  # not in the spawned workers, which import this module as __mp_main__
    sys.exit(main())
