"""What the explained-forward lock costs: throughput of one explainer called from 1 thread vs 2.

``captum_gradeclip._core.base._HOOKED_FORWARD`` is one process-wide ``threading.RLock`` held while
an explained forward runs with its hooks on (the hooks live on the shared model's modules, and
PyTorch's MHA fast-path switch is process-wide). So the forwards of concurrent ``attribute`` calls
take turns, in one process, whatever explainer or model they use; the backward passes and the maps
run in parallel. This script measures it on a random Hugging Face CLIP::

    python benchmarks/forward_lock.py                  # ViT-S/16-sized, 224 px, T = 8 texts
    python benchmarks/forward_lock.py --quick          # a tiny CLIP, seconds

Cells (each ``--calls`` ``attribute_all`` calls in all, torch on one thread per Python thread):

- ``1 thread``: one thread makes every call;
- ``2 threads, one explainer``: two threads share one explainer (the lock serialises the forwards);
- ``2 threads, 2 models``: two explainers on two copies of the model, the lock still shared;
- ``2 threads, 2 models, no lock``: the same with the lock replaced by a no-op, which is safe
  only here (separate modules, no ``nn.MultiheadAttention``): what the lock costs.

Prints one line per cell (seconds, calls per second, speed-up over 1 thread; for 1 thread, the
share of its time spent inside the lock, which bounds what threads can gain: 2 threads at most
``1 / max(share, 1/2)``) and, with ``--json``, writes them. On a machine with fewer free cores than threads no cell can speed up.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import threading
import time
from typing import Callable, List


def build(quick: bool, texts: int):
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    if quick:
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      image_size=32, patch_size=8)
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    else:  # ViT-S/16-sized vision tower
        vision = dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=6,
                      image_size=224, patch_size=16)
        text = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4)
    model = CLIPModel(CLIPConfig(vision_config=vision, text_config=dict(text, vocab_size=1000, bos_token_id=0, pad_token_id=1, eos_token_id=999),
                                 projection_dim=128)).eval()
    ids = torch.randint(1, 998, (texts, 12))
    ids[:, -1] = 999
    return model, ids, torch.randn(1, 3, vision["image_size"], vision["image_size"])


def _explainer(model, ids):
    from captum_gradeclip import ImageGradECLIP, ImageTextSimilarity

    return ImageGradECLIP(ImageTextSimilarity(model, input_ids=ids), model.vision_model.encoder.layers[-1])


class _TimedLock:
    """The lock, counting the seconds it is held (calls are not nested here)."""

    def __init__(self, lock) -> None:
        self.lock, self.held = lock, 0.0

    def __enter__(self) -> None:
        self.lock.acquire()
        self.t0 = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.held += time.perf_counter() - self.t0
        self.lock.release()


def timed(workers: List[Callable[[], None]]) -> float:
    """Seconds until every worker (one thread each) has returned."""
    threads = [threading.Thread(target=w) for w in workers]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def cells(quick: bool, calls: int, texts: int) -> List[dict]:
    import torch

    from captum_gradeclip._core import base

    torch.set_num_threads(1)  # intra-op threads are per Python thread: 2 threads use 2 cores
    model, ids, pixels = build(quick, texts)
    a, b = _explainer(model, ids), _explainer(copy.deepcopy(model), ids)
    loop = lambda g, n: (lambda: [g.attribute_all(pixels) for _ in range(n)])  # noqa: E731
    loop(a, 2)(), loop(b, 2)()  # warm-up
    half = calls // 2
    out = [("1 thread", [loop(a, 2 * half)]), ("2 threads, one explainer", [loop(a, half), loop(a, half)]),
           ("2 threads, 2 models", [loop(a, half), loop(b, half)])]
    lock = base._HOOKED_FORWARD
    counting = base._HOOKED_FORWARD = _TimedLock(lock)
    try:
        rows = [dict(cell=name, seconds=timed(w)) for name, w in out[:1]]
    finally:
        base._HOOKED_FORWARD = lock
    rows[0]["locked_share"] = counting.held / rows[0]["seconds"]  # of one thread's time: inside the lock
    rows += [dict(cell=name, seconds=timed(w)) for name, w in out[1:]]
    mha = getattr(torch.backends, "mha", None)
    fast = mha.get_fastpath_enabled() if mha is not None else None
    try:  # unlocked, the threads' saves and restores of the MHA switch may interleave: restored below
        base._HOOKED_FORWARD = contextlib.nullcontext()
        rows.append(dict(cell="2 threads, 2 models, no lock", seconds=timed([loop(a, half), loop(b, half)])))
    finally:
        base._HOOKED_FORWARD = lock
        if mha is not None:
            mha.set_fastpath_enabled(fast)
    for r in rows:
        r.update(calls=2 * half, per_second=2 * half / r["seconds"], speedup=rows[0]["seconds"] / r["seconds"])
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny model (smoke test)")
    ap.add_argument("--calls", type=int, default=8, help="attribute_all calls per cell (split over the threads)")
    ap.add_argument("--texts", type=int, default=8)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = cells(args.quick, args.calls, args.texts)
    for r in rows:
        share = f"  ({100 * r['locked_share']:.0f} % of the time inside the lock)" if "locked_share" in r else ""
        print(f"{r['cell']:32s} {r['seconds']:7.2f} s  {r['per_second']:6.2f} calls/s  x{r['speedup']:.2f}{share}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
