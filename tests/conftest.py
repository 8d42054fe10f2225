"""Shared fixtures.  The browser fixtures are thin wrappers over ``tests/_lab.py``.

End-to-end tests (marker ``e2e``) use the ``lab`` fixture::

    @pytest.mark.e2e
    def test_slider(lab):
        page = lab.open_notebook(["import ipywidgets as w", "s = w.IntSlider(); s"])
        page.locator(".widget-slider").wait_for()
        assert lab.execute("print(s.value)") == "0\\n"

The ``nb7`` fixture is the same in Notebook 7 (``jupyter notebook``): its ``open_notebook``
opens ``/notebooks/<path>``, and its kernels are the ones of a Notebook 7 server.

Nothing starts unless such a test runs: one server per front end and one Chromium then serve
the whole session.  Without Playwright or Chromium the e2e tests are skipped, or fail when
``DAL_REQUIRE_BROWSER=1`` (CI).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import _lab
import pytest

_BROWSER_FIXTURES = {"jupyter_lab", "jupyter_notebook", "browser_context", "lab", "nb7"}
_SESSION_KEY = pytest.StashKey[_lab.LabSession]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip gpu tests without CUDA; skip (or fail, under DAL_REQUIRE_BROWSER=1) e2e tests without a browser."""
    if item.get_closest_marker("gpu") is not None:
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")
    is_e2e = item.get_closest_marker("e2e") is not None
    uses_browser = bool(_BROWSER_FIXTURES & set(getattr(item, "fixturenames", ())))
    if uses_browser and not is_e2e:
        pytest.fail(
            f"{item.nodeid} uses the Jupyter server/browser fixtures but is not marked "
            "@pytest.mark.e2e; mark it so that `-m 'not e2e'` leaves it out.",
            pytrace=False,
        )
    if not is_e2e:
        return
    problem = _lab.browser_problem()
    if problem is None:
        return
    if os.environ.get("DAL_REQUIRE_BROWSER") == "1":
        pytest.fail(
            f"DAL_REQUIRE_BROWSER=1 but the browser tests cannot run: {problem}", pytrace=False
        )
    pytest.skip(f"browser tests need Playwright and Chromium: {problem}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On a failed e2e test, screenshot its open pages and attach the browser console."""
    report = yield
    session = item.stash.get(_SESSION_KEY, None)
    if session is None or not report.failed or report.when == "teardown":
        return report
    from playwright.sync_api import Error as PlaywrightError

    base = re.sub(r"[^\w.-]+", "_", item.name).strip("_")
    saved = []
    for i, page in enumerate(session.pages):
        if page.is_closed():
            continue
        try:
            saved.append(str(_lab.save_screenshot(page, base if i == 0 else f"{base}-{i}")))
        except (PlaywrightError, OSError) as exc:  # must not hide the real failure
            saved.append(f"(screenshot failed: {exc})")
    if saved:
        report.sections.append(("screenshots", "\n".join(saved)))
    if session.console:
        report.sections.append(("browser console", "\n".join(session.console[-200:])))
    return report


@pytest.fixture(scope="session")
def jupyter_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_lab.JupyterLab]:
    """A JupyterLab server for the whole session (see ``_lab.JupyterLab``)."""
    server = _lab.JupyterLab.start(tmp_path_factory.mktemp("jupyterlab"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def jupyter_notebook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_lab.JupyterLab]:
    """A Notebook 7 server for the whole session (``_lab.JupyterLab`` with ``app="notebook"``)."""
    server = _lab.JupyterLab.start(tmp_path_factory.mktemp("notebook7"), app="notebook")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser_context(tmp_path_factory: pytest.TempPathFactory):
    """A headless Chromium (Playwright persistent context) for the whole session."""
    pw, context = _lab.launch_browser(tmp_path_factory.mktemp("chromium-profile"))
    yield context
    try:
        context.close()
    finally:
        pw.stop()


@pytest.fixture
def lab(
    request: pytest.FixtureRequest,
    browser_context,
    jupyter_lab: _lab.JupyterLab,
) -> Iterator[_lab.LabSession]:
    """One test's view of the shared server and browser (see ``_lab.LabSession``).

    Its tabs are closed and every kernel is shut down after the test.
    """
    session = _lab.LabSession(jupyter_lab, browser_context, test_name=request.node.name)
    request.node.stash[_SESSION_KEY] = session
    yield session
    session.close()


@pytest.fixture
def nb7(
    request: pytest.FixtureRequest,
    browser_context,
    jupyter_notebook: _lab.JupyterLab,
) -> Iterator[_lab.LabSession]:
    """Like ``lab``, in Notebook 7: notebooks open at ``/notebooks/<path>``.

    Its tabs are closed and every kernel of the Notebook 7 server is shut down after the test.
    """
    session = _lab.LabSession(jupyter_notebook, browser_context, test_name=request.node.name)
    request.node.stash[_SESSION_KEY] = session
    yield session
    session.close()


# ---------------------------------------------------------------- PostgreSQL (see _pg.py)
@pytest.fixture(scope="module")
def pg_cluster():
    """A throwaway PostgreSQL cluster per test module; skipped without a server, failed when
    ``DAL_REQUIRE_POSTGRES=1`` (CI), as the browser tests are."""
    import _pg

    problem = _pg.problem()
    if problem is not None:
        if os.environ.get("DAL_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"DAL_REQUIRE_POSTGRES=1 but PostgreSQL cannot run: {problem}")
        pytest.skip(f"PostgreSQL tests need a server: {problem}")
    c = _pg.Cluster()
    c.start()
    yield c
    c.destroy()


@pytest.fixture
def pg_url(pg_cluster, request):
    """The URL of a new database of its own for this test."""
    name = "t_" + "".join(ch if ch.isalnum() else "_" for ch in request.node.name)[:50].lower()
    return pg_cluster.create_db(name)
