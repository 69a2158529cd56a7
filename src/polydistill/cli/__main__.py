"""``python -m polydistill.cli``."""

from . import main

main()
