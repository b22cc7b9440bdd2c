"""Driving the explorer and a report in headless Chromium (selenium), for tests/test_browser.py and
benchmarks/screenshots.py / app_latency.py. Loopback addresses only; every wait is bounded."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from typing import Any, Optional, Sequence, Tuple

#: The longest any wait for the page may take (seconds).
WAIT = 120


def browser_missing() -> Optional[str]:
    """Why the browser tests cannot run here (``None`` when they can)."""
    for mod in ("gradio", "gradio_client", "selenium"):
        try:
            __import__(mod)
        except ImportError:
            return f"{mod} is not installed (pip install 'captum-gradeclip[app]')"
    if chromium() is None:
        return "no chromium / chromedriver (apt-get install chromium chromium-driver)"
    return None


def chromium() -> Optional[Tuple[str, str]]:
    """``(browser, driver)`` paths: $CHROMIUM / $CHROMEDRIVER, else Debian's."""
    b = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    d = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    return (b, d) if b and d else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(clip: Any, vocabulary: Any = None, title: str = "ShapesCLIP") -> Tuple[Any, str]:
    """Serve the explorer for ``clip`` on 127.0.0.1 in this process; ``(demo, url)``."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from captum_gradeclip.app.ui import build_app

    demo = build_app(clip, vocabulary, title)
    port = free_port()
    previous = signal.getsignal(signal.SIGINT)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, ssr_mode=False, quiet=True)
    signal.signal(signal.SIGINT, previous)  # launch() takes Ctrl-C for its server; later tests need Python's own
    return demo, f"http://127.0.0.1:{port}/"


def driver(width: int = 1280, height: int = 1000) -> Any:
    """A headless Chromium (no sandbox: CI runs as root), ``width`` x ``height``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, drv = chromium()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--window-size={width},{height}", "--hide-scrollbars"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(drv), options=opts)
    d.set_page_load_timeout(WAIT)
    return d


def wait_for(d: Any, condition: Any, timeout: float = WAIT) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(d, timeout, poll_frequency=0.05).until(condition)


def css(d: Any, selector: str) -> list:
    return d.find_elements("css selector", selector)


def open_app(d: Any, url: str) -> None:
    """Load the page and wait until its explain button is there."""
    d.get(url)
    wait_for(d, lambda d: css(d, "#gce-explain"))


def fill(d: Any, image: Optional[str], prompts: Sequence[str], caption: str = "") -> None:
    """Upload ``image`` (a path), type the prompts (one per line) and the caption."""
    if image is not None:
        css(d, "#gce-image input[type=file]")[0].send_keys(image)
        wait_for(d, lambda d: css(d, "#gce-image img"))
    for sel, text in (("#gce-prompts textarea", "\n".join(prompts)), ("#gce-caption textarea", caption)):
        box = css(d, sel)[0]
        box.clear()
        box.send_keys(text)


def grid_run(d: Any) -> str:
    tables = css(d, "#gce-grid table.gce-grid")
    return tables[0].get_attribute("data-run") if tables else ""


def message(d: Any) -> str:
    return css(d, "#gce-message")[0].text


def explain(d: Any, n_maps: Optional[int], says: str = "") -> float:
    """Click explain; wait for a new grid of ``n_maps`` maps (``None``: for a message that
    contains ``says`` instead); returns the seconds from the click to that."""
    before = grid_run(d)
    t0 = time.perf_counter()
    css(d, "#gce-explain")[0].click()
    if n_maps is None:
        wait_for(d, lambda d: says in message(d) and "processing" not in message(d))
    else:
        wait_for(d, lambda d: grid_run(d) not in ("", before) and len(css(d, "#gce-grid img.gce-map")) == n_maps
                 and all(i.get_attribute("complete") == "true" for i in css(d, "#gce-grid img.gce-map")))
    return time.perf_counter() - t0
