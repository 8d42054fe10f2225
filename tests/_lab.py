"""Machinery for end-to-end tests: a private Jupyter server driven by headless Chromium.

The server serves JupyterLab (``jupyter lab``) or Notebook 7 (``jupyter notebook``); the
differences between the two front ends (page URL, where the kernel state shows) live in
:data:`_FRONT_ENDS`, with what was learned about Notebook 7 in a real browser.

Everything here is started lazily by the fixtures in ``conftest.py``; importing this module
starts nothing and does not import Playwright.  One server per front end and one browser serve
a whole test session; each test opens its notebooks in fresh tabs and its kernels are shut down
afterwards.

The facts behind the choices (flags, selectors, what "ready" and "done" look like) are recorded
in ``shared/BROWSER_TESTING.md``.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page, Playwright

__all__ = [
    "DONE_SENTINEL",
    "KERNEL_DISPLAY_NAME",
    "SCREENSHOT_DIR",
    "JupyterLab",
    "KernelError",
    "LabSession",
    "Markdown",
    "browser_problem",
    "chromium_path",
    "element_boxes",
    "launch_browser",
    "layout_problems",
    "save_screenshot",
    "wait_until",
    "write_notebook",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT_DIR = REPO_ROOT / "artifacts" / "screenshots"

#: Printed by the cell that :meth:`LabSession.open_notebook` appends; its output marks "done".
DONE_SENTINEL = "__DAL_DONE__"
#: Display name of the kernelspec written for the server; the status bar shows it.
KERNEL_DISPLAY_NAME = "Python 3 (dal-widgets tests)"

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Lab settings applied as overrides.  With windowing off every cell is in the DOM, so lookups
# do not depend on what is scrolled into view.  Without the news settings a "get notified
# about Jupyter news?" toast sits over the bottom right of the page.
LAB_SETTINGS_OVERRIDES = {
    "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
}


@dataclass(frozen=True)
class _FrontEnd:
    """What differs between JupyterLab and Notebook 7 for these tests (the rest is shared)."""

    module: str  # ``python -m <module>`` starts the server
    notebook_page: str  # page URL of a notebook, relative to the base URL
    query: dict[str, str]  # extra query for that page
    # JS predicate, given the kernelspec display name: the page shows a kernel of that
    # name, idle.  Not enough on its own (see LabSession._wait_kernel_idle).
    kernel_idle_js: str
    kernel_text_js: str  # JS: the text that shows the kernel's state, for error messages


_FRONT_ENDS = {
    # JupyterLab: the status bar names the kernel and says "Idle" (BROWSER_TESTING.md).
    # ``reset`` ignores a saved layout.
    "lab": _FrontEnd(
        module="jupyterlab",
        notebook_page="lab/tree/{path}",
        query={"reset": ""},
        kernel_idle_js="""([name]) => {
          const bar = document.querySelector('#jp-main-statusbar');
          return !!bar && bar.textContent.includes(name) && bar.textContent.includes('Idle');
        }""",
        kernel_text_js="() => (document.querySelector('#jp-main-statusbar') || {}).textContent",
    ),
    # Notebook 7 (7.6.5 on JupyterLab 4.6 components), checked in headless Chromium 156:
    # - A notebook opens at /notebooks/<path>, one page per document.  The JupyterLab
    #   classes hold: .jp-NotebookPanel, .jp-Notebook, .jp-Cell / .jp-CodeCell /
    #   .jp-MarkdownCell, .jp-InputPrompt, .jp-OutputArea, the menu bar (.lm-MenuBar-item
    #   "Run") with .lm-Menu-item[data-command='runmenu:run-all'] ("Run All Cells"), and the
    #   notebook toolbar's jp-button[data-command='docmanager:save'].
    # - There is no status bar (#jp-main-statusbar is absent).  The kernel shows in the
    #   notebook toolbar: .jp-KernelName holds the kernelspec's display name (taken from the
    #   notebook's metadata, so already before a kernel exists) and
    #   .jp-Notebook-ExecutionIndicator[data-status] goes initializing, connecting, unknown,
    #   idle.  It read "idle" while GET /api/sessions was still empty, hence the server check
    #   in LabSession._wait_kernel_idle.  .jp-NotebookKernelStatus (top bar) says "Kernel
    #   Connecting" and so on, and is blank once the kernel is idle or busy.
    # - The settings overrides apply (passed as --JupyterNotebookApp.app_settings_dir; the
    #   schema served at /lab/api/settings then defaults windowingMode to "none"): every cell
    #   is in the DOM, 44 of 44 in a notebook taller than the page.
    # - The notebook is at most about 1200 px wide and centred (the View menu's
    #   "notebook:toggle-full-width" lifts that), so the App is 1108 px wide at both 1280 and
    #   1920 px: labeler and map side by side, about 530 px each.
    # - Command-mode keys are JupyterLab's: "2" on a markdown cell makes it "## ...", digits
    #   on a code cell do nothing, "m" turns a code cell into markdown.  Clicking or focusing
    #   an element inside an output makes that output's code cell the active cell, so while
    #   a widget has focus a leaked "m" (not a digit) is what would change a cell's type.
    # - Every page load logs "[pageerror] Cannot read properties of undefined (reading
    #   'schema')" from Notebook 7's own notebook_core bundle (with or without our
    #   overrides; JupyterLab does not); nothing visible breaks.
    "notebook": _FrontEnd(
        module="notebook",
        notebook_page="notebooks/{path}",
        query={},
        kernel_idle_js="""([name]) => {
          const kernel = document.querySelector('.jp-NotebookPanel-toolbar .jp-KernelName');
          const state = document.querySelector('.jp-Notebook-ExecutionIndicator');
          return !!kernel && kernel.textContent.includes(name)
            && !!state && state.dataset.status === 'idle';
        }""",
        kernel_text_js="""() => {
          const kernel = document.querySelector('.jp-KernelName');
          const state = document.querySelector('.jp-Notebook-ExecutionIndicator');
          return `${kernel ? kernel.textContent : '(no kernel name)'} | `
            + `${state ? state.dataset.status : '(no execution indicator)'}`;
        }""",
    ),
}

_PR_SET_PDEATHSIG = 1


class Markdown(str):
    """A notebook cell source meant as markdown: ``open_notebook([Markdown("# Title"), "x = 1"])``."""

    __slots__ = ()


class KernelError(AssertionError):
    """Code run with :meth:`JupyterLab.execute` raised in the kernel."""


# --------------------------------------------------------------------------------------------
# Availability
# --------------------------------------------------------------------------------------------


def chromium_path() -> str | None:
    """Path of the Chromium executable, or None when none is installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def browser_problem() -> str | None:
    """Why the end-to-end tests cannot run here, or None when Playwright and Chromium exist."""
    missing = []
    if importlib.util.find_spec("playwright") is None:
        missing.append("the Python package 'playwright' is not installed (pip install playwright)")
    if chromium_path() is None:
        missing.append(
            "no 'chromium' executable on PATH (apt-get install -y chromium; "
            "Playwright's own browser download is not used)"
        )
    return "; ".join(missing) or None


# --------------------------------------------------------------------------------------------
# Waiting
# --------------------------------------------------------------------------------------------


def wait_until(
    condition: Callable[[], Any],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    details: Callable[[], str] | None = None,
) -> Any:
    """Poll ``condition`` until it returns something truthy, and return that.

    Raises an AssertionError naming ``what`` (and the text of ``details()``, when given) once
    ``timeout`` seconds have passed.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            extra = f"\n{details()}" if details is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{extra}")
        time.sleep(interval)


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """``preexec_fn``: have the kernel send SIGTERM to the server when the test process dies.

    SIGTERM (not SIGKILL) lets the server shut its kernels down; the kernels also watch their
    parent (ipykernel's ParentPoller) and exit when it goes.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _write_kernelspec(data_dir: Path) -> None:
    """A ``python3`` kernelspec that runs ipykernel with the tests' own interpreter."""
    spec_dir = data_dir / "kernels" / "python3"
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": KERNEL_DISPLAY_NAME,
        "language": "python",
        "metadata": {"debugger": False},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1), encoding="utf-8")


@dataclass
class JupyterLab:
    """A running Jupyter server private to the test session (JupyterLab or Notebook 7).

    Attributes
    ----------
    app : {"lab", "notebook"}
        The front end it serves: JupyterLab (``/lab``) or Notebook 7 (``/tree``,
        ``/notebooks/<path>``).  Both load the other extensions, so the REST API, kernels
        and widget managers are the same.
    base_url : str
        ``http://127.0.0.1:<port>/`` (with the trailing slash).
    token : str
        The random token; :meth:`url` adds it to page URLs.
    root_dir : pathlib.Path
        The server's root directory; tests write notebooks and data here, and kernels start
        with it as their working directory (for notebooks at the top level).
    runtime_dir : pathlib.Path
        ``JUPYTER_RUNTIME_DIR``: the kernels' connection files are here.
    log_path : pathlib.Path
        The server's combined stdout and stderr.
    """

    app: str
    base_url: str
    token: str = field(repr=False)
    root_dir: Path
    runtime_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    @classmethod
    def start(cls, workdir: Path, *, app: str = "lab", timeout: float = 60.0) -> JupyterLab:
        """Start a server whose every directory lives under ``workdir``; wait until it answers.

        ``app`` is ``"lab"`` (``jupyter lab``) or ``"notebook"`` (``jupyter notebook``,
        Notebook 7); the token, kernelspec and settings isolation are the same for both.
        """
        if app not in _FRONT_ENDS:
            raise ValueError(
                f"The 'app' parameter of JupyterLab.start must be one of "
                f"{sorted(_FRONT_ENDS)}. Got {app!r} instead."
            )
        workdir = Path(workdir)
        dirs = {
            name: workdir / name
            for name in ("root", "config", "data", "runtime", "settings", "workspaces")
        }
        dirs["app_settings"] = workdir / "app-settings"
        dirs["ipython"] = workdir / "ipython"
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        _write_kernelspec(dirs["data"])
        (dirs["app_settings"] / "overrides.json").write_text(
            json.dumps(LAB_SETTINGS_OVERRIDES, indent=1), encoding="utf-8"
        )

        env = dict(os.environ)
        for var in ("JUPYTER_TOKEN", "JUPYTER_PASSWORD", "JUPYTER_PREFER_ENV_PATH"):
            env.pop(var, None)
        env.update(
            JUPYTER_CONFIG_DIR=str(dirs["config"]),
            JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
            JUPYTERLAB_SETTINGS_DIR=str(dirs["settings"]),
            JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]),
            # Searched before the environment's data dirs: our python3 kernelspec wins.
            JUPYTER_PATH=str(dirs["data"]),
            JUPYTER_DATA_DIR=str(dirs["data"]),
            IPYTHONDIR=str(dirs["ipython"]),
            PYTHONUNBUFFERED="1",
        )
        port = _free_port()
        token = secrets.token_hex(24)
        cmd = [
            sys.executable,
            "-m",
            _FRONT_ENDS[app].module,
            "--no-browser",
            "--allow-root",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={dirs['root']}",
            f"--LabApp.app_settings_dir={dirs['app_settings']}",
            "--LabApp.news_url=null",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        if app == "notebook":
            # Notebook 7's own app reads its overrides from its own app_settings_dir (the
            # LabApp flags above still apply: jupyterlab's server extension loads beside it
            # and serves the news and update checks).
            cmd.append(f"--JupyterNotebookApp.app_settings_dir={dirs['app_settings']}")
        log_path = workdir / f"{_FRONT_ENDS[app].module}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=dirs["root"],
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        lab = cls(
            app=app,
            base_url=f"http://127.0.0.1:{port}/",
            token=token,
            root_dir=dirs["root"],
            runtime_dir=dirs["runtime"],
            log_path=log_path,
            process=process,
        )
        try:
            lab._wait_ready(timeout)
        except BaseException:
            lab.stop()
            raise
        return lab

    def _wait_ready(self, timeout: float) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.module} exited with code {self.process.returncode} before it was "
                    f"ready. End of its log ({self.log_path}):\n{self.log_tail()}"
                )
            try:
                self.api("GET", "api/status", timeout=2)
            except (OSError, urllib.error.URLError):
                return False
            return True

        wait_until(
            ready,
            timeout=timeout,
            interval=0.1,
            what=f"{self.module} to answer on {self.base_url}api/status",
            details=lambda: f"End of its log ({self.log_path}):\n{self.log_tail()}",
        )

    @property
    def module(self) -> str:
        """What ``python -m`` ran: ``jupyterlab`` or ``notebook``."""
        return _FRONT_ENDS[self.app].module

    # ---- HTTP ----------------------------------------------------------------------------

    def notebook_url(self, path: str, workspace: str | None = None) -> str:
        """URL of the page that shows the notebook at ``path`` (relative to the root);
        ``workspace``: a JupyterLab workspace of its own, for a second tab (two tabs on one
        workspace make the second one navigate away to a new one)."""
        front = _FRONT_ENDS[self.app]
        page = front.notebook_page.format(path=urllib.parse.quote(path))
        if workspace is not None and self.app == "lab":
            page = f"lab/workspaces/{urllib.parse.quote(workspace)}/tree/{urllib.parse.quote(path)}"
        return self.url(page, **front.query)

    def url(self, path: str, **query: str) -> str:
        """Absolute URL of ``path`` (relative to the base URL) with the token in the query.

        A query value of ``""`` gives a bare flag, e.g. ``url("lab/tree/a.ipynb", reset="")``
        gives ``.../lab/tree/a.ipynb?reset&token=...``.
        """
        parts = [k if v == "" else f"{k}={urllib.parse.quote(v)}" for k, v in query.items()]
        parts.append(f"token={self.token}")
        return f"{self.base_url}{path.lstrip('/')}?{'&'.join(parts)}"

    def api(self, method: str, path: str, body: Any = None, *, timeout: float = 10) -> Any:
        """Call the server's REST API; return the decoded JSON (None for an empty answer)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base_url + path.lstrip("/"),
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            payload = resp.read()
        return json.loads(payload) if payload else None

    # ---- kernels -------------------------------------------------------------------------

    def kernel_id(self, notebook: str, *, timeout: float = 10) -> str:
        """Id of the kernel of the session open on ``notebook`` (a path relative to the root)."""

        def find() -> str | None:
            for s in self.api("GET", "api/sessions"):
                if s.get("path") == notebook and s.get("kernel"):
                    return s["kernel"]["id"]
            return None

        return wait_until(
            find,
            timeout=timeout,
            interval=0.1,
            what=f"a kernel session for {notebook!r}",
            details=lambda: f"sessions: {[s.get('path') for s in self.api('GET', 'api/sessions')]}",
        )

    def execute(self, code: str, notebook: str, *, timeout: float = 30) -> str:
        """Run ``code`` in the kernel of ``notebook`` and return what it showed as text.

        The result is the stdout the code printed followed by the ``text/plain`` of its result
        (the value of a final expression) or of what it displayed, the way a cell would show
        them; stderr (warnings) is left out unless the code raised.  The code runs in the
        same kernel as the notebook's cells (same globals), through a second client on the
        kernel's connection file, so it does not add a cell to the notebook.  Widget changes it
        makes reach the browser like any other.  Raises :class:`KernelError` with the traceback
        if the code raised.
        """
        from jupyter_client import BlockingKernelClient

        kid = self.kernel_id(notebook)
        client = BlockingKernelClient(connection_file=str(self.runtime_dir / f"kernel-{kid}.json"))
        client.load_connection_file()
        client.start_channels()
        chunks: list[str] = []
        errors: list[str] = []

        def on_output(msg: dict[str, Any]) -> None:
            kind, content = msg["header"]["msg_type"], msg["content"]
            if kind == "stream":
                (chunks if content["name"] == "stdout" else errors).append(content["text"])
            elif kind in ("execute_result", "display_data"):
                chunks.append(content["data"].get("text/plain", "") + "\n")
            elif kind == "error":
                errors.append("\n".join(content["traceback"]))

        try:
            client.wait_for_ready(timeout=timeout)
            reply = client.execute_interactive(
                code, timeout=timeout, output_hook=on_output, allow_stdin=False, store_history=False
            )
        except (TimeoutError, RuntimeError) as exc:  # RuntimeError: no kernel_info reply
            raise AssertionError(
                f"code did not finish within {timeout:.0f} s in the kernel of {notebook!r} "
                f"(busy, or a dead kernel? {exc}):\n{code}"
            ) from exc
        finally:
            client.stop_channels()
        if reply["content"]["status"] != "ok":
            tb = re.sub(r"\x1b\[[0-9;]*m", "", "".join(errors))
            raise KernelError(f"code raised in the kernel of {notebook!r}:\n{code}\n---\n{tb}")
        return "".join(chunks)

    def shutdown_kernels(self) -> None:
        """Shut down every session and kernel, so the next test starts from none."""
        for s in self.api("GET", "api/sessions"):
            self.api("DELETE", f"api/sessions/{s['id']}", timeout=30)
        for k in self.api("GET", "api/kernels"):
            self.api("DELETE", f"api/kernels/{k['id']}", timeout=30)

    # ---- stopping ------------------------------------------------------------------------

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of the server's log."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, *, timeout: float = 15) -> None:
        """Stop the server: ask it (it stops its kernels), then SIGTERM, then SIGKILL its group."""
        proc = self.process
        if proc.poll() is None:
            try:
                self.api("POST", "api/shutdown", timeout=5)
            except (OSError, urllib.error.URLError):
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass

        def group_gone() -> bool:
            proc.poll()  # reap the leader, or its zombie keeps the group alive
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return True
            return False

        # The group can outlive its leader (a child left behind): end every member.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if group_gone():
                return
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(AssertionError):
                wait_until(group_gone, timeout=5, what="the server's process group to exit")
        if not group_gone():
            raise RuntimeError(f"{self.module}'s process group {proc.pid} survived SIGKILL")


# --------------------------------------------------------------------------------------------
# The browser
# --------------------------------------------------------------------------------------------


def launch_browser(user_data_dir: Path) -> tuple[Playwright, BrowserContext]:
    """Start Playwright and a headless Chromium with a fresh profile in ``user_data_dir``.

    Returns the Playwright instance (stop it after closing the context) and the context.
    """
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:  # checked before the fixtures run; kept for direct callers
        raise RuntimeError(browser_problem())
    pw = sync_playwright().start()
    try:
        context = pw.chromium.launch_persistent_context(
            str(user_data_dir),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 800},
        )
    except BaseException:
        pw.stop()
        raise
    context.set_default_timeout(30_000)
    return pw, context


def save_screenshot(page: Page, name: str) -> Path:
    """Save a screenshot of ``page`` as ``artifacts/screenshots/<name>.png``; return its path."""
    safe = re.sub(r"[^\w.-]+", "_", name).strip("_") or "page"
    path = SCREENSHOT_DIR / f"{safe}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path))
    return path


# --------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------

#: A Playwright bounding box: ``{"x", "y", "width", "height"}`` in CSS pixels of the page.
Box = dict[str, float]


def element_boxes(page: Page, selectors: Mapping[str, str]) -> dict[str, Box]:
    """The bounding box of the first element each selector matches, by the same names.

    Selectors are Playwright's (``".dal-chart >> nth=1"`` picks the second match).  Raises
    AssertionError naming the part when an element is missing or not rendered.
    """
    boxes = {}
    for name, selector in selectors.items():
        box = page.locator(selector).first.bounding_box()
        if box is None:
            raise AssertionError(f"{name} ({selector!r}) is not rendered: no bounding box")
        boxes[name] = box
    return boxes


def layout_problems(parts: Mapping[str, Box], container: Box, *, slack: float = 1.0) -> list[str]:
    """What is wrong with laying ``parts`` out in ``container``: empty when nothing is.

    A problem is a part with no area, a part that reaches outside the container, or two parts
    that overlap; ``slack`` pixels are allowed for sub-pixel rounding.  Overlap is of the
    boxes, so a part drawn over another (an absolutely placed plot, a row that failed to
    wrap) is caught, while a part merely touching its neighbour is not.
    """

    def right(b: Box) -> float:
        return b["x"] + b["width"]

    def bottom(b: Box) -> float:
        return b["y"] + b["height"]

    def fmt(b: Box) -> str:
        return f"x {b['x']:.0f}..{right(b):.0f}, y {b['y']:.0f}..{bottom(b):.0f}"

    problems = []
    names = list(parts)
    for name in names:
        b = parts[name]
        if b["width"] < 1 or b["height"] < 1:
            problems.append(f"{name} has no area ({fmt(b)})")
        if (
            b["x"] < container["x"] - slack
            or b["y"] < container["y"] - slack
            or right(b) > right(container) + slack
            or bottom(b) > bottom(container) + slack
        ):
            problems.append(f"{name} ({fmt(b)}) reaches outside the container ({fmt(container)})")
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            a, b = parts[first], parts[second]
            if (
                min(right(a), right(b)) - max(a["x"], b["x"]) > slack
                and min(bottom(a), bottom(b)) - max(a["y"], b["y"]) > slack
            ):
                problems.append(f"{first} ({fmt(a)}) overlaps {second} ({fmt(b)})")
    return problems


# --------------------------------------------------------------------------------------------
# Notebooks
# --------------------------------------------------------------------------------------------


def write_notebook(path: Path, cells: Sequence[str]) -> Path:
    """Write ``cells`` as a notebook (nbformat 4) for the test kernelspec at ``path``.

    Sources are code cells, except :class:`Markdown` ones.
    """
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": KERNEL_DISPLAY_NAME,
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    for src in cells:
        if isinstance(src, Markdown):
            nb.cells.append(nbformat.v4.new_markdown_cell(str(src)))
        else:
            nb.cells.append(nbformat.v4.new_code_cell(src))
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


# In the page: "done" when the last code cell shows the sentinel and no prompt says [*].
# "stopped" when Run All gave up after an error: nothing is queued ([*]), some cell ran (a
# numbered prompt) but the last cell did not.  Run All marks every cell [*] at once, so this
# state does not occur while a run is going well; an error output has no marker of its own
# (it renders as stderr, like a warning).
_RUN_STATE_JS = """
(sentinel) => {
  const nb = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook');
  if (!nb) return null;
  const cells = [...nb.querySelectorAll('.jp-CodeCell')];
  if (!cells.length) return null;
  const prompt = c => (c.querySelector('.jp-InputPrompt') || {}).textContent || '';
  if (cells.some(c => prompt(c).includes('*'))) return null;
  const last = cells[cells.length - 1];
  const out = last.querySelector('.jp-OutputArea');
  if (out && out.textContent.includes(sentinel)) return 'done';
  const ran = cells.some(c => /\\[\\d+\\]/.test(prompt(c)));
  if (ran && !/\\[\\d+\\]/.test(prompt(last))) return 'stopped';
  return null;
}
"""

_CELL_TYPES_JS = """
() => [...document.querySelectorAll('.jp-Notebook .jp-Cell')].map(c =>
  c.classList.contains('jp-CodeCell') ? 'code'
  : c.classList.contains('jp-MarkdownCell') ? 'markdown'
  : c.classList.contains('jp-RawCell') ? 'raw' : c.className)
"""

_OUTPUTS_JS = """
() => [...document.querySelectorAll('.jp-Notebook .jp-Cell')].map((c, i) => {
  const prompt = c.querySelector('.jp-InputPrompt');
  const out = c.querySelector('.jp-OutputArea');
  return `cell ${i} ${prompt ? prompt.textContent.trim() : ''} `
       + (out ? out.textContent.trim().slice(0, 400) : '');
}).join('\\n')
"""


@dataclass(repr=False)
class LabSession:
    """What one test sees: open notebooks in the shared browser, run code in their kernels.

    Made by the ``lab`` fixture; pages it opened are closed and kernels shut down after the
    test.  Pages are screenshotted on failure by the ``pytest_runtest_makereport`` hook.
    """

    server: JupyterLab
    context: BrowserContext
    test_name: str
    pages: list[Page] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    notebook: str | None = None

    def __repr__(self) -> str:
        return f"LabSession(test={self.test_name!r}, notebook={self.notebook!r}, pages={len(self.pages)})"

    @property
    def root_dir(self) -> Path:
        """The server's root directory (shared with the kernels: files written there by the
        kernel can be read by the test directly)."""
        return self.server.root_dir

    def open_notebook(
        self,
        cells: Sequence[str],
        name: str | None = None,
        *,
        timeout: float = 90,
        workspace: str | None = None,
    ) -> Page:
        """Write ``cells`` as a notebook, open it in a new tab, Run All, wait until it is done.

        Parameters
        ----------
        cells : sequence of str
            Cell sources: code cells, except :class:`Markdown` ones.  A last cell printing
            :data:`DONE_SENTINEL` is appended.
        name : str, optional
            Notebook path relative to the root; defaults to ``<test name>.ipynb``.
        timeout : float
            Seconds allowed for each stage (opening with an idle kernel, running all cells).
        workspace : str, optional
            Open it in a JupyterLab workspace of its own (a second notebook tab at once).

        Returns
        -------
        playwright.sync_api.Page
            The tab, with the notebook fully run: every cell executed, the kernel idle and
            the sentinel printed.  Raises AssertionError (with cell outputs and the status
            bar text) if a cell errors or a stage times out.
        """
        from playwright.sync_api import Error as PlaywrightError

        if name is None:
            name = re.sub(r"[^\w.-]+", "_", self.test_name).strip("_") + ".ipynb"
        write_notebook(self.root_dir / name, [*cells, f"print({DONE_SENTINEL!r})"])
        self.notebook = name

        page = self.context.new_page()
        self.pages.append(page)
        page.on("console", lambda m: self.console.append(f"[{m.type}] {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"[pageerror] {e}"))
        ms = int(timeout * 1000)
        page.goto(self.server.notebook_url(name, workspace), wait_until="domcontentloaded")
        self._wait_kernel_idle(page, name, timeout)

        page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-item[data-command='runmenu:run-all']").click()
        try:
            handle = page.wait_for_function(
                _RUN_STATE_JS, arg=DONE_SENTINEL, timeout=ms, polling=100
            )
            state = handle.json_value()
        except PlaywrightError as exc:
            raise AssertionError(
                f"{name}: Run All did not finish within {timeout:.0f} s (no {DONE_SENTINEL} "
                f"in the last cell, or a prompt still shows [*]).\nKernel: "
                f"{self._kernel_text(page)!r}\nCells:\n{_safe_eval(page, _OUTPUTS_JS)}"
            ) from exc
        if state == "stopped":
            raise AssertionError(
                f"{name}: Run All stopped before the last cell (a cell raised?).\nCells:\n"
                f"{_safe_eval(page, _OUTPUTS_JS)}"
            )
        return page

    def open_existing_notebook(self, name: str, *, timeout: float = 90) -> Page:
        """Open the notebook already at ``name`` (relative to the root) in a new tab, unrun.

        Returns the tab once it shows the test kernel idle (see :meth:`_wait_kernel_idle`);
        running its cells is the caller's.  The notebook's kernelspec must be ``python3``.
        """
        self.notebook = name
        page = self.context.new_page()
        self.pages.append(page)
        page.on("console", lambda m: self.console.append(f"[{m.type}] {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"[pageerror] {e}"))
        page.goto(self.server.notebook_url(name), wait_until="domcontentloaded")
        self._wait_kernel_idle(page, name, timeout)
        return page

    def _kernel_text(self, page: Page) -> str:
        return _safe_eval(page, _FRONT_ENDS[self.server.app].kernel_text_js)

    def _wait_kernel_idle(self, page: Page, name: str, timeout: float) -> None:
        """Wait until the page shows the test kernel idle and the server has a kernel for it.

        Both: Run All before the kernel exists opens a kernel dialog, and the page's own
        indicators can say idle before that (Notebook 7's toolbar does).
        """
        from playwright.sync_api import Error as PlaywrightError

        js = _FRONT_ENDS[self.server.app].kernel_idle_js

        def idle() -> bool:
            if not page.evaluate(js, [KERNEL_DISPLAY_NAME]):
                return False
            return any(
                s.get("path") == name and (s.get("kernel") or {}).get("execution_state") == "idle"
                for s in self.server.api("GET", "api/sessions")
            )

        try:
            wait_until(
                idle,
                timeout=timeout,
                interval=0.1,
                what=f"{name} to show the kernel {KERNEL_DISPLAY_NAME!r} idle",
                details=lambda: (
                    f"Page shows: {self._kernel_text(page)!r}\n"
                    f"Server log:\n{self.server.log_tail(30)}"
                ),
            )
        except PlaywrightError as exc:  # the page went away while we looked
            raise AssertionError(f"{name}: the page failed while opening: {exc}") from exc

    def cell_types(self, page: Page) -> list[str]:
        """The type of each cell the page shows, in order: ``code``, ``markdown`` or ``raw``."""
        return page.evaluate(_CELL_TYPES_JS)

    def save_notebook(self, page: Page, *, timeout: float = 30) -> Any:
        """Save the notebook open in ``page`` with its toolbar's Save button; return it as read
        back from disk (an ``nbformat`` node), once the file on disk has changed."""
        import nbformat

        if self.notebook is None:
            raise RuntimeError("save_notebook() needs a notebook: call open_notebook() first")
        path = self.root_dir / self.notebook
        before = path.stat().st_mtime_ns
        page.locator(".jp-NotebookPanel-toolbar jp-button[data-command='docmanager:save']").click()

        def saved() -> Any:
            if path.stat().st_mtime_ns == before:
                return None
            try:
                return nbformat.read(str(path), as_version=4)
            except (OSError, ValueError):  # caught mid-write (ValueError: truncated JSON)
                return None

        return wait_until(saved, timeout=timeout, interval=0.1, what=f"{path.name} to be saved")

    def execute(self, code: str, notebook: str | None = None, *, timeout: float = 30) -> str:
        """Run ``code`` in the kernel of ``notebook`` (default: the last one opened).

        Returns printed stdout plus the ``text/plain`` of a final expression; see
        :meth:`JupyterLab.execute`.
        """
        notebook = notebook or self.notebook
        if notebook is None:
            raise RuntimeError("execute() needs a notebook: call open_notebook() first")
        return self.server.execute(code, notebook, timeout=timeout)

    def save_screenshot(self, page: Page, name: str) -> Path:
        """Save ``page`` as ``artifacts/screenshots/<name>.png``; return the path."""
        return save_screenshot(page, name)

    def close(self) -> None:
        """Close this test's tabs, then shut down all kernels."""
        from playwright.sync_api import Error as PlaywrightError

        for page in self.pages:
            try:
                page.close()
            except PlaywrightError:  # the browser may already be gone; nothing left to close
                pass
        self.pages.clear()
        self.server.shutdown_kernels()


def _safe_eval(page: Page, js: str) -> str:
    from playwright.sync_api import Error as PlaywrightError

    try:
        return str(page.evaluate(js))
    except PlaywrightError as exc:
        return f"(could not read the page: {exc})"
