"""``python -m cgsim VERB [overrides]``: same as the ``cgsim`` script."""

from cgsim.cli import main

main()
