"""The package as users meet it: a light import, a small API, no Jupyter in the headless core."""

from __future__ import annotations

import subprocess
import sys

import dal_widgets as dal


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return set(out.stdout.split())


def test_import_is_light():
    mods = _modules_after("import dal_widgets")
    assert not {"torch", "umap", "plotly", "ipywidgets", "sklearn", "anywidget"} & mods


def test_headless_core_never_imports_jupyter():
    code = (
        "import numpy as np, dal_widgets as dal\n"
        "ds = dal.datasets.from_arrays(np.random.rand(60, 3), y=np.arange(60) % 2, holdout=0.2)\n"
        "s = dal.Session(ds, store=None, device='cpu')\n"
        "s.label(s.query(10), 0)\n"
        "s.train(block=True); s.evaluate(); s.query(5)\n"
        "dal.simulate\n"
    )
    mods = _modules_after(code)
    assert "torch" in mods  # the session really ran
    assert not {"ipywidgets", "IPython", "plotly", "anywidget", "umap"} & mods


def test_public_api():
    for name in ("datasets", "strategies", "Session", "simulate"):
        assert hasattr(dal, name)
    assert set(dal.__all__) <= set(dir(dal))
    for fn in ("digits", "mnist", "from_arrays", "image_folder", "texts"):
        assert callable(getattr(dal.datasets, fn))
