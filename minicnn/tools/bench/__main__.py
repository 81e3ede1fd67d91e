"""``python -m minicnn.tools.bench``: the same as ``minicnn bench`` (and the memory child)."""
import sys

from minicnn.tools.bench.command import main

sys.exit(main())
