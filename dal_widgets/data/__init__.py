"""Datasets with stable sample ids, a fixed class list and an optional held-out split.

Also available as ``dal_widgets.datasets``. Nothing here downloads: loaders read arrays or
local files.
"""

from __future__ import annotations

from dal_widgets.data._dataset import KINDS, Dataset
from dal_widgets.data._files import LazyImages, image_files, image_folder, mnist
from dal_widgets.data._loaders import digits, from_arrays, texts

__all__ = [
    "KINDS",
    "Dataset",
    "LazyImages",
    "digits",
    "from_arrays",
    "image_files",
    "image_folder",
    "mnist",
    "texts",
]
