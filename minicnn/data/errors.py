"""The one error type of every data-file loader (IDX files, downloads, data sets)."""
from __future__ import annotations

__all__ = ["DatasetError"]


class DatasetError(ValueError):
    """A data file is missing, malformed, or fails its checksum; the message names the file."""
