"""``python -m glotpool ...`` is the ``glotpool`` command (also under ``torchrun -m glotpool dist ...``)."""
import sys

from glotpool.cli import main

sys.exit(main())
