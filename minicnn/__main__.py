"""``python -m minicnn``: the command line (see ``minicnn.cli``)."""
from minicnn.cli import main

raise SystemExit(main())
