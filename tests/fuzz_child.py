"""Run fuzz cases in this (child) process under an address-space limit; print one JSON line
per case: {"case": name, "outcome": "loaded" | "<ExceptionType>", "seconds": s}.

usage: python fuzz_child.py CASES_DIR LIMIT_MIB
Every file CASES_DIR/*.npz is loaded with minicnn.load, every CASES_DIR/*.idx* with read_idx.
"""
import json
import resource
import sys
import time
from pathlib import Path

cases, limit_mib = Path(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit_mib << 20, limit_mib << 20))

import minicnn  # noqa: E402  (after the limit)
from minicnn.data.datasets import read_idx  # noqa: E402

for path in sorted(cases.iterdir()):
    start = time.perf_counter()
    try:
        if path.suffix == ".npz":
            minicnn.load(path)
        else:
            read_idx(path)
        outcome = "loaded"
    except Exception as exc:                            # the parent checks the type's name
        outcome = type(exc).__name__
    print(json.dumps({"case": path.name, "outcome": outcome,
                      "seconds": time.perf_counter() - start}), flush=True)
