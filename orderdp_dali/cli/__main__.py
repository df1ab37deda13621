"""``python -m orderdp_dali.cli`` is the ``orderdp-dali`` command."""
import sys

from orderdp_dali.cli import main

sys.exit(main())
