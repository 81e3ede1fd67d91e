"""The bottom of the stack: array modules (NumPy/CuPy), per-thread modes, random state,
symbolic tensors and atomic file writes. Imports nothing else of minicnn."""
