"""What the concreteness study's statistics cost at MS-COCO size, on one core.

    python benchmarks/analysis_stats.py                              # 250,000 occurrences, 1,000 resamples
    python benchmarks/analysis_stats.py --occurrences 2743           # ShapesCLIP's size (the README's run)

Synthetic word rows shaped like COCO val 2017's captions: ``--captions`` captions (default 25,000)
of 7-13 words (mean 10), five captions per image, words drawn from a Zipf-like vocabulary of 5,000
words with 4,000 rated (ratings at two decimals, so they tie, as Brysbaert's do), importances
normalised per caption. Then, with ``torch.set_num_threads(1)``, the study's own functions:

- ``token level``: :func:`captum_gradeclip.analysis.stats.correlation_intervals` of rating vs
  relative importance over every rated occurrence, with the partial correlations given position
  and caption length, a cluster bootstrap over images (``--n-boot`` resamples);
- ``bands``: the four bands' mean relative importance, cluster bootstrap;
- ``summarize``: all of :func:`captum_gradeclip.analysis.concreteness.summarize` (the two above,
  the word-level statistics over words, the counts), from the rows.

It prints wall and CPU seconds (``time.process_time``: this process's CPU time, so that other jobs
on a shared machine do not count) per stage. Target: the whole summary of 250,000 occurrences with
1,000 resamples in at most 60 s on one core.
"""

from __future__ import annotations

import argparse
import math
import time

import torch


def synthetic_rows(captions: int, seed: int = 0):
    """Word rows (:class:`~captum_gradeclip.analysis.concreteness.WordRow`) of ``captions`` captions."""
    from captum_gradeclip.analysis.concreteness import WordRow

    g = torch.Generator().manual_seed(seed)
    vocab = 5000
    p = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64)
    rating = (torch.rand(vocab, generator=g, dtype=torch.float64) * 4 + 1).mul(100).round().div(100)
    rating[4000:] = math.nan
    lengths = torch.randint(7, 14, (captions,), generator=g)
    words = torch.multinomial(p, int(lengths.sum()), replacement=True, generator=g)
    raw = torch.rand(int(lengths.sum()), generator=g, dtype=torch.float64) + 0.1 * rating.nan_to_num(3.0)[words]
    rows, at = [], 0
    for c, n in enumerate(lengths.tolist()):
        w, imp = words[at:at + n].tolist(), raw[at:at + n] / raw[at:at + n].sum()
        for j in range(n):
            rows.append(WordRow(f"img-{c // 5}", f"caption-{c}", f"w{w[j]}", f"w{w[j]}", j, n, float(imp[j]),
                                float(imp[j]) * n, float(rating[w[j]])))
        at += n
    return rows


def _timed(name: str, fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    print(f"{name:<12} {time.perf_counter() - w:7.1f} s wall {time.process_time() - c:7.1f} s CPU")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--captions", type=int, default=25_000)
    ap.add_argument("--occurrences", type=int, default=None, help="instead of --captions: about this many words")
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from captum_gradeclip.analysis.concreteness import _bands, summarize
    from captum_gradeclip.analysis.stats import correlation_intervals

    captions = args.captions if args.occurrences is None else max(1, round(args.occurrences / 10))
    rows = _timed("rows", lambda: synthetic_rows(captions))
    rated = [r for r in rows if not math.isnan(r.rating)]
    print(f"{captions} captions, {len({r.image for r in rows})} images, {len(rows)} occurrences, {len(rated)} rated, "
          f"{args.n_boot} resamples, 1 thread")
    x, y, cl = [r.rating for r in rated], [r.relative for r in rated], [r.image for r in rated]
    cov = ([float(r.position) for r in rated], [float(r.n_words) for r in rated])
    iv = _timed("token level", lambda: correlation_intervals(x, y, covariates=cov, clusters=cl, n_boot=args.n_boot))
    _timed("bands", lambda: _bands(x, y, args.n_boot, cl))
    s = _timed("summarize", lambda: summarize(rows, [], n_boot=args.n_boot))
    print("token level:", {k: f"{v.mean:+.3f} [{v.low:+.3f}, {v.high:+.3f}]" for k, v in iv.items()
                           if "given" not in k})
    w = s["word_level"]
    print(f"word level (n = {w['n']}): Spearman {w['spearman'].mean:+.3f} [{w['spearman'].low:+.3f}, "
          f"{w['spearman'].high:+.3f}]")


if __name__ == "__main__":
    main()
