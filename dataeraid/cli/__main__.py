"""``python -m dataeraid.cli``, the same as the ``dataerai`` script."""

from . import main

main()
