"""Reaching the Hugging Face hub quickly or not at all, and loading without progress bars.

Without network, ``from_pretrained("openai/clip-vit-base-patch16")`` retries for about a minute
before it fails. The command line asks first: a hub name is read from the local cache only
(``local_files_only=True``) when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set or when
the hub's host does not accept a TCP connection within :data:`CONNECT_TIMEOUT` seconds; then a
model missing from the cache fails at once, with a message naming the alternatives.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from pathlib import Path
from typing import Dict, Iterator, Tuple
from urllib.parse import urlparse

#: seconds to wait for the hub's (or the proxy's) host to accept a connection
CONNECT_TIMEOUT = 3.0

_TRUE = ("1", "true", "yes", "on")


def offline_requested() -> bool:
    """Whether ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` asks for no network."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _host() -> Tuple[str, int]:
    """The host and port a hub request connects to first: the HTTPS proxy if one is set, else
    ``HF_ENDPOINT`` (default ``https://huggingface.co``)."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy or os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


def hub_reachable(timeout: float = CONNECT_TIMEOUT) -> bool:
    """Whether the hub's host (or the proxy) accepts a TCP connection within ``timeout`` s (asked
    once per process, host and timeout)."""
    return _connects(*_host(), timeout)


@functools.lru_cache(maxsize=None)
def _connects(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pretrained_kwargs(name: str) -> Dict[str, bool]:
    """Extra ``from_pretrained`` arguments for ``name``: ``{}`` for a local folder or a reachable
    hub, ``{"local_files_only": True}`` when offline is asked for or the hub cannot be reached."""
    if Path(name).is_dir():
        return {}
    if offline_requested() or not hub_reachable():
        return {"local_files_only": True}
    return {}


def advice(name: str, kwargs: Dict[str, bool]) -> str:
    """What to do when loading ``name`` failed with these :func:`pretrained_kwargs`."""
    why = ""
    if kwargs.get("local_files_only"):
        why = ("HF_HUB_OFFLINE is set" if offline_requested()
               else f"The hub ({_host()[0]}) did not answer within {CONNECT_TIMEOUT:g} s")
        why = f"{why} and {name!r} is not in the local cache. "
    return (f"{why}Give a local folder written by save_pretrained (model.save_pretrained(DIR) and "
            "processor.save_pretrained(DIR) on a machine with network), or a hub name with network access.")


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """transformers' ``Loading weights`` progress bar off for the block (download bars, if any,
    stay as they were); restored afterwards."""
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging

    was_on, hub_was_off = logging.is_progress_bar_enabled(), are_progress_bars_disabled()
    logging.disable_progress_bar()
    if not hub_was_off:
        enable_progress_bars()
    try:
        yield
    finally:
        if was_on:
            logging.enable_progress_bar()
        if hub_was_off:
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()
