"""Self-tests of the browser fixtures: widgets render, respond and stay safe in a real JupyterLab.

Each test would fail if the widget machinery it covers broke (rendering, kernel-to-browser
sync, browser-to-kernel messages, keyboard focus, updates from a background thread, text
escaping), so they double as smoke tests of the environment the project's widgets run in.

The last tests run the App in Notebook 7 (the ``nb7`` fixture): label keys reach the store,
no cell changes type, and the App's parts keep apart at 1280 and 1920 px.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from _lab import KernelError, Markdown, element_boxes, layout_problems, wait_until

pytestmark = pytest.mark.e2e

# The status bar reads "<kernel> | Idle" when no cell runs.
_IDLE = re.compile(r"\|\s*Idle")


def test_int_slider_renders_and_follows_python(lab):
    from playwright.sync_api import expect  # here: without Playwright the module still collects

    page = lab.open_notebook(
        [
            "import ipywidgets as widgets\n"
            "slider = widgets.IntSlider(value=7, min=0, max=10, description='dal')\n"
            "slider.add_class('dal-e2e-slider')\n"
            "slider",
        ]
    )
    slider = page.locator(".dal-e2e-slider")
    slider.wait_for(state="visible", timeout=10_000)
    readout = slider.locator(".widget-readout")
    expect(readout).to_have_text("7")

    # Kernel side: the notebook's globals are reachable, and a change made there shows up.
    assert lab.execute("print(slider.value)") == "7\n"
    lab.execute("slider.value = 9")
    expect(readout).to_have_text("9")
    assert lab.save_screenshot(page, "slider").is_file()


_KEYS_ESM = """
export default {
  render({ model, el }) {
    el.tabIndex = 0;
    el.setAttribute("data-lm-suppress-shortcuts", "true");
    el.textContent = "press a key";
    el.addEventListener("keydown", (event) => {
      if (/^[0-9a-z]$/.test(event.key)) {
        model.send({ key: event.key });
        event.stopPropagation();
        event.preventDefault();
      }
    });
  },
};
"""


def test_anywidget_keys_reach_python_and_not_the_notebook(lab):
    keys_file = lab.root_dir / "widget_keys.txt"
    keys_file.unlink(missing_ok=True)
    page = lab.open_notebook(
        [
            Markdown("# Label with the keyboard"),
            "import pathlib\nimport anywidget\n"
            f"KEYS = pathlib.Path({str(keys_file)!r})\n"
            f"class Keys(anywidget.AnyWidget):\n    _esm = {_KEYS_ESM!r}\n"
            "def on_key(widget, content, buffers):\n"
            "    with KEYS.open('a') as f:\n"
            "        f.write(content['key'])\n"
            "keys = Keys()\n"
            "keys.add_class('dal-e2e-keys')\n"
            "keys.on_msg(on_key)\n"
            "keys",
            Markdown("In command mode, M would turn the focused cell into markdown."),
        ]
    )
    count = "(sel) => document.querySelectorAll('.jp-Notebook ' + sel).length"
    markdown_before = page.evaluate(count, ".jp-MarkdownCell")
    code_before = page.evaluate(count, ".jp-CodeCell")
    assert markdown_before == 2

    widget = page.locator(".dal-e2e-keys")
    widget.click()
    page.wait_for_function("() => document.activeElement.classList.contains('dal-e2e-keys')")
    # Digits are label keys; in JupyterLab 4.6 they only act on a focused markdown cell, so
    # "m" (change the cell to markdown) is the probe that shows a key leaking to the notebook.
    # Either the attribute or stopPropagation() alone stops it; without both it leaks.
    keys = "12345m"
    for key in keys:
        page.keyboard.press(key)
        page.wait_for_timeout(250)  # a person's pace; the messages must not merge or drop

    wait_until(
        lambda: keys_file.is_file() and keys_file.read_text() == keys,
        timeout=10,
        what=f"the kernel to write {keys!r} to {keys_file.name}",
        details=lambda: f"file holds {keys_file.read_text() if keys_file.is_file() else None!r}",
    )
    assert page.evaluate(count, ".jp-MarkdownCell") == markdown_before, "a key reached the notebook"
    assert page.evaluate(count, ".jp-CodeCell") == code_before, "a key reached the notebook"


def test_background_thread_updates_reach_the_browser_while_idle(lab):
    go_file = lab.root_dir / "progress_go"
    go_file.unlink(missing_ok=True)
    page = lab.open_notebook(
        [
            "import pathlib, threading, time\nimport ipywidgets as widgets\n"
            "bar = widgets.IntProgress(value=0, min=0, max=10)\n"
            "bar.add_class('dal-e2e-progress')\n"
            f"GO = pathlib.Path({str(go_file)!r})\n"
            "def work():\n"
            "    while not GO.exists():  # started by the test once the notebook is idle\n"
            "        time.sleep(0.05)\n"
            "    for i in range(1, 11):\n"
            "        time.sleep(0.2)\n"
            "        bar.value = i\n"
            "threading.Thread(target=work, daemon=True).start()\n"
            "bar",
        ]
    )
    page.locator(".dal-e2e-progress .progress-bar").wait_for(state="attached", timeout=10_000)
    sample_js = """() => ({
        width: document.querySelector('.dal-e2e-progress .progress-bar').style.width,
        status: document.querySelector('#jp-main-statusbar').textContent,
        queued: [...document.querySelectorAll('.jp-InputPrompt')]
            .some(p => p.textContent.includes('*')),
    })"""
    assert page.evaluate(sample_js)["width"] in ("0%", "")

    go_file.touch()
    samples: list[tuple[float, dict]] = []
    start = time.monotonic()

    def finished() -> bool:
        samples.append((time.monotonic() - start, page.evaluate(sample_js)))
        return samples[-1][1]["width"] == "100%"

    wait_until(
        finished,
        timeout=15,
        interval=0.05,
        what="the progress bar to reach 100% from the background thread",
        details=lambda: f"widths seen: {[s['width'] for _, s in samples]}",
    )
    widths = [float(s["width"].rstrip("%") or 0) for _, s in samples]
    distinct = sorted(set(widths))
    assert widths == sorted(widths), f"the bar went backwards: {widths}"
    assert len(distinct) >= 5, f"updates arrived in a burst, not over time: {distinct}"
    first_move = next(t for (t, _), w in zip(samples, widths) if w > 0)
    assert samples[-1][0] - first_move > 1.0, "ten updates 0.2 s apart arrived too fast"
    assert all(_IDLE.search(s["status"]) for _, s in samples), "the kernel was not idle"
    assert not any(s["queued"] for _, s in samples), "a cell was running"


def test_anywidget_text_content_keeps_markup_inert(lab):
    payload = '<img src=x onerror="window.__pwned=1">'
    page = lab.open_notebook(
        [
            "import anywidget, traitlets\n"
            "class SafeText(anywidget.AnyWidget):\n"
            "    _esm = '''export default { render({ model, el }) {\n"
            "      const span = document.createElement('span');\n"
            "      span.className = 'dal-e2e-safe-text';\n"
            "      span.textContent = model.get('text');\n"
            "      el.appendChild(span);\n"
            "    } };'''\n"
            "    text = traitlets.Unicode().tag(sync=True)\n"
            f"SafeText(text={payload!r})",
            # Positive control: the same markup through innerHTML does run, in this browser,
            # so the check below is not passing merely because onerror never fires here.
            "class UnsafeHtml(anywidget.AnyWidget):\n"
            "    _esm = '''export default { render({ model, el }) {\n"
            "      el.innerHTML = model.get('html');\n"
            "    } };'''\n"
            "    html = traitlets.Unicode().tag(sync=True)\n"
            "UnsafeHtml(html='<img src=x onerror=\"window.__control=1\">')",
        ]
    )
    safe = page.locator(".dal-e2e-safe-text")
    safe.wait_for(state="visible", timeout=10_000)
    page.wait_for_function("() => window.__control === 1", timeout=10_000)
    assert safe.text_content() == payload
    assert safe.locator("img").count() == 0
    assert page.evaluate("() => typeof window.__pwned") == "undefined"


def test_failures_are_reported_with_the_error(lab):
    with pytest.raises(AssertionError, match="ZeroDivisionError"):
        lab.open_notebook(["x = 1", "1 / 0", "print('never')"], timeout=30)
    with pytest.raises(KernelError, match="NameError"):
        lab.execute("undefined_name")
    assert lab.execute("print(x + 1)\nx") == "2\n1\n"


# --------------------------------------------------------------------------------------------
# Notebook 7: the App works there too (issue 21)
# --------------------------------------------------------------------------------------------

#: The App's parts, which must neither overlap nor leave the App (as in test_app.py for
#: JupyterLab).
_APP_PARTS = {
    "labeler": ".dal-app .dal-labeler",
    "map": ".dal-app .js-plotly-plot.dal-map",
    "loss chart": ".dal-app .dal-chart >> nth=0",
    "accuracy chart": ".dal-app .dal-chart >> nth=1",
}


def _app_notebook(store):
    """A notebook with the App on digits; its labels go to the SQLite file ``store``."""
    return [
        Markdown("# Label digits"),
        "import dal_widgets as dal\n"
        "session = dal.Session(\n"
        f"    dal.datasets.digits(), store={str(store)!r}, device='cpu',\n"
        "    train_config=dal.TrainConfig(steps=50),\n"
        ")\n"
        "app = dal.App(session, batch_size=8, map_method='pca')\n"
        "app",
        Markdown(
            "In command mode, 1 to 6 make this a heading and M turns a code cell into markdown."
        ),
    ]


def test_nb7_app_labels_with_digit_keys_and_no_cell_changes_type(nb7):
    store = nb7.root_dir / "nb7_keys.db"
    store.unlink(missing_ok=True)
    page = nb7.open_notebook(_app_notebook(store))
    types = nb7.cell_types(page)
    assert types == ["markdown", "code", "markdown", "code"]  # the sentinel cell is last
    batch = nb7.execute("print(*app.labeler.batch_ids)").split()
    assert len(batch) == 8
    assert nb7.execute("print(len(session.labels))") == "0\n"

    labeler = page.locator(".dal-app .dal-labeler")
    labeler.wait_for(state="visible", timeout=20_000)
    labeler.locator(".dal-hint").click()  # not a tile: a click on one moves the cursor
    page.wait_for_function(
        "() => document.querySelector('.dal-app .dal-labeler').contains(document.activeElement)"
    )
    # Digits label (the digits' classes are "0" to "9"); "m" is no labeler key, so it probes
    # whether keys the labeler does not handle leak to the notebook.
    for key in "31415m":
        page.keyboard.press(key)
        page.wait_for_timeout(150)

    def labels():
        out = nb7.execute("print(len(session.labels))")
        return int(out) >= 5

    wait_until(labels, timeout=15, interval=0.3, what="5 labels in the session's store")
    # session.labels is the store's view (SQLite at ``store``).
    stored = json.loads(
        nb7.execute(
            "import json\nprint(json.dumps({str(k): v for k, v in session.labels.items()}))"
        )
    )
    assert sorted(stored.values()) == sorted("31415")
    assert set(stored) == set(batch[:5]), "the labels went to other samples than the first five"

    # No cell changed type or appeared, in the page and in the notebook as saved.
    assert nb7.cell_types(page) == types
    saved = nb7.save_notebook(page)
    assert [c.cell_type for c in saved.cells] == types
    assert [c.source for c in saved.cells[:3]] == _app_notebook(store)

    # Control: the same keys do reach a notebook cell in command mode (so the checks above
    # could fail).  Click the last cell's prompt: command mode on that code cell.
    page.keyboard.press("Escape")
    page.locator(".jp-Notebook .jp-Cell").last.locator(".jp-InputPrompt").click()
    page.keyboard.press("m")
    wait_until(
        lambda: nb7.cell_types(page)[-1] == "markdown",
        timeout=5,
        what="'m' in command mode to turn the last cell into markdown",
        details=lambda: f"cells: {nb7.cell_types(page)}",
    )


def test_nb7_app_layout_at_1280_and_1920(nb7):
    page = nb7.open_notebook(_app_notebook(nb7.root_dir / "nb7_layout.db"))
    app = page.locator(".dal-app")
    for selector in _APP_PARTS.values():
        page.locator(selector).first.wait_for(state="visible", timeout=20_000)
    problems = {}
    for width, height in [(1280, 800), (1920, 1080)]:
        page.set_viewport_size({"width": width, "height": height})
        # The App's top at the top of the notebook's scroll area, so the picture shows it.
        app.evaluate("el => el.scrollIntoView({block: 'start'})")
        page.wait_for_timeout(500)  # plotly and the charts redraw on resize
        boxes = element_boxes(page, _APP_PARTS)
        app_box = app.bounding_box()
        assert app_box is not None
        nb7.save_screenshot(page, f"nb7-app-{width}x{height}")
        found = layout_problems(boxes, app_box)
        found += [f"{name} is narrow" for name in ("labeler", "map") if boxes[name]["width"] < 250]
        if found:
            problems[f"{width}x{height}"] = found
    assert problems == {}, "the App's parts overlap or leave the App (screenshots saved)"
