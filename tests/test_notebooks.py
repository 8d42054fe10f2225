"""The course notebooks run top to bottom, headless (nbclient), each in a fresh temp folder."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks_and_their_outputs_are_cleared():
    assert len(NOTEBOOKS) >= 4
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, (
                    f"{path.name} has saved outputs"
                )


def test_each_notebook_ends_with_an_exercise_and_its_check():
    # What the student sees: an exercise, a cell for the answer, a cell that checks it; no
    # test scaffolding (the tests below find out on their own that every cell ran).
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        *_, exercise, answer, check = nb.cells
        assert exercise.cell_type == "markdown" and exercise.source.startswith("## Exercise"), (
            path.name
        )
        assert answer.cell_type == "code" and check.cell_type == "code", path.name
        assert "Correct:" in check.source and "Not yet:" in check.source, path.name
        assert not any("__DAL" in cell.source for cell in nb.cells), f"{path.name}: test marker"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_headless(path, tmp_path):
    work = tmp_path / path.name
    shutil.copy(path, work)
    nb = nbformat.read(work, as_version=4)
    t0 = time.perf_counter()
    # execute() runs every cell in order and raises CellExecutionError on the first error.
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    seconds = time.perf_counter() - t0
    code = [c for c in nb.cells if c.cell_type == "code"]
    not_run = [i for i, c in enumerate(code) if c.execution_count is None]
    assert not not_run, f"{path.name}: code cells {not_run} (counted from 0) did not run"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors
    # The last cell checks the exercise; with the stored placeholder answer it gives a hint.
    printed = "".join(o.get("text", "") for o in code[-1].outputs if o.output_type == "stream")
    assert printed.startswith("Not yet:"), f"{path.name}: the exercise check printed {printed!r}"
    assert seconds < 180, (
        f"{path.name} took {seconds:.0f} s (the course promises < 3 minutes on 2 CPU cores)"
    )
