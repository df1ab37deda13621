"""``python -m orderdp_dali.train`` (and ``torchrun -m orderdp_dali.train``): see :mod:`orderdp_dali.train`."""
import sys

from orderdp_dali.train import main

if __name__ == "__main__":
    sys.exit(main())
