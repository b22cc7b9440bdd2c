"""The command line with a fault injected through the engine's test seam
(``captum_gradeclip.scale.engine.after_shard``), for the tests that run it under torchrun:

    python -m torch.distributed.run ... tests/scale_fault.py kill RANK:N explain-dataset ...
    python tests/scale_fault.py sigint 0:N explain-dataset ...

``kill RANK:N``: rank RANK SIGKILLs itself after writing N shards; ``sigint RANK:N``: it sends
itself SIGINT (Ctrl-C) instead.
"""

from __future__ import annotations

import os
import signal
import sys


def inject(kind: str, spec: str) -> None:
    """Replace the engine's ``after_shard`` seam with the fault ``kind`` at ``spec`` (``RANK:N``)."""
    from captum_gradeclip.scale import engine

    rank, _, n = spec.partition(":")
    sig = {"kill": signal.SIGKILL, "sigint": signal.SIGINT}[kind]

    def fault(r: int, written: int) -> None:
        if str(r) == rank and written >= int(n):
            os.kill(os.getpid(), sig)

    engine.after_shard = fault


if __name__ == "__main__":
    inject(sys.argv[1], sys.argv[2])
    from captum_gradeclip.cli import main

    sys.exit(main(sys.argv[3:]))
