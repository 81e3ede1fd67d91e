"""``minicnn import MODEL.onnx OUT.npz``: an ONNX file as a minicnn checkpoint (see
``minicnn.onnx.importer``), which evaluate, predict, summary, export and training then read.

    minicnn import resnet_tiny.onnx runs/imported/model.npz
    minicnn summary runs/imported/model.npz

A file minicnn cannot import (unreadable, over a budget, an operator or attribute it lacks)
is one line on stderr naming the node and operator, exit status 1.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import minicnn
from minicnn.cli.common import CLIError


def add_parser(sub: Any) -> None:
    """Declare ``import`` on the subcommand parsers ``sub``."""
    p = sub.add_parser("import", help="read an ONNX model into a minicnn checkpoint")
    p.add_argument("model", metavar="MODEL.onnx", help="the ONNX file to import")
    p.add_argument("out", metavar="OUT.npz", help="the checkpoint to write")
    p.set_defaults(func=cmd_import)


def cmd_import(args: argparse.Namespace) -> int:
    from minicnn.onnx.importer import import_onnx
    source, out = Path(args.model), Path(args.out)
    if not source.is_file():
        raise CLIError(f"{source}: no such file")
    if out.suffix != ".npz":
        raise CLIError(f"{out}: the checkpoint must be a .npz file")
    if not out.parent.is_dir():
        raise CLIError(f"{out.parent}: no such folder")
    model = import_onnx(source)
    path = minicnn.save(model, out, source=source.name)
    params = sum(p.size for p in model.parameters())
    shape = ", ".join(map(str, model.input_tensor.shape))
    print(f"wrote {path} ({len(model.layers)} layers, {params:,} parameters, input (N, {shape})"
          f" from {source.name})")
    return 0
