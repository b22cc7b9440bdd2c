"""A newcomer's first commands: the shipped example image, ShapesCLIP's unknown words, the hub
failing fast without network, no "Loading weights" bar, and the demo's two configurations."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from captum_gradeclip import hub
from captum_gradeclip.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "example.png"


def test_unknown_words_are_named_in_order_once():
    from captum_gradeclip.shapes import unknown_words

    assert unknown_words(["a red circle", "An orange Bar"]) == []
    assert unknown_words(["a dog", "a cat and a dog", "a red circle."]) == ["dog", "cat", "."]


def test_explain_refuses_unknown_words_on_shapes_clip_unless_allowed(tmp_path, capsys):
    out = tmp_path / "fig.png"
    assert main(["explain", str(EXAMPLE), "--text", "a dog", "--text", "a red circle", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "text 'a dog': the model does not know 'dog'" in err and "circle square triangle" in err
    assert "--allow-unknown-words" in err and len(err.strip().splitlines()) == 1 and not out.exists()
    assert main(["explain", str(EXAMPLE), "--text", "a dog", "--allow-unknown-words", "--out", str(out)]) == 0
    assert "warning: the model does not know 'dog'" in capsys.readouterr().err and out.is_file()


def test_readme_example_image_runs_and_loads_without_a_progress_bar(tmp_path, capsys):
    out = tmp_path / "explanation.png"
    assert main(["explain", str(EXAMPLE), "--text", "a green triangle", "--text", "a blue cross",
                 "--last", "3", "--spatial", "cosine_per_head", "--out", str(out)]) == 0
    assert out.is_file()
    err = capsys.readouterr().err
    assert "Loading weights" not in err, err
    assert main(["explain", str(EXAMPLE), "--text", "a blue cross", "--last", "0"]) == 2
    assert "--last must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "unreachable"])
def test_hub_name_fails_fast_without_network(monkeypatch, capsys, how):
    hub._connects.cache_clear()
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:  # nothing listens on port 9 of this machine: the connection is refused at once
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HTTPS_PROXY", raising=False)
        monkeypatch.delenv("https_proxy", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    t0 = time.perf_counter()
    assert main(["explain", str(EXAMPLE), "--text", "a red circle", "--model", "nobody/no-such-clip"]) == 2
    took = time.perf_counter() - t0
    hub._connects.cache_clear()
    err = capsys.readouterr().err
    assert "could not load CLIP model 'nobody/no-such-clip'" in err and "save_pretrained" in err
    assert ("HF_HUB_OFFLINE is set" if how == "HF_HUB_OFFLINE" else "did not answer within 3 s") in err
    assert took < 15, took  # the hub's own retries take about a minute


def test_a_local_folder_never_asks_the_hub(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "hub_reachable", lambda *a: pytest.fail("asked the hub for a local folder"))
    assert hub.pretrained_kwargs(str(tmp_path)) == {}


def test_quiet_loading_restores_the_progress_bar_setting():
    from transformers.utils import logging

    before = logging.is_progress_bar_enabled()
    with hub.quiet_loading():
        assert not logging.is_progress_bar_enabled()
    assert logging.is_progress_bar_enabled() == before
