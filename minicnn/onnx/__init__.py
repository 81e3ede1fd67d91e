"""ONNX: export a trained model (``export_onnx``) and import one (``import_onnx``). Sits above
the models it converts."""
from minicnn.onnx.export import (
    DEFAULT_OPSET,
    MIN_OPSET,
    ExportContext,
    ExportError,
    export_onnx,
)
from minicnn.onnx.importer import OnnxImportError, import_onnx

__all__ = ["ExportError", "ExportContext", "export_onnx", "DEFAULT_OPSET", "MIN_OPSET",
           "OnnxImportError", "import_onnx"]
