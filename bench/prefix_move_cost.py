"""What moving an NPC's prefix into the option scorer's cache costs, by history length (issue 18).

A choice decision copies the NPC's evaluated cells from the main cache (a KV stream per sequence) into
the option scorer's unified cache. Since session 8, SmolLM2's main cache runs flash attention and the
scorer does not, so the V cells are laid out again on the way (``native.moved_state``). Here llama.cpp
alone, the sidecar's context (16,384 cells, 16 sequences, 2 threads), as ``OptionScorer._moved`` does
it with reused buffers: median ms of save + rewrite + load, main cache FA off (nothing to relay out)
and FA on (relaid out), after HISTORY cells.

    python bench/prefix_move_cost.py smollm2-135m 1000,500,150,1000    # under a minute on 2 cores
"""

import statistics
import sys
import time

import numpy as np

from npcai.model import catalog
from npcai.model.native import Batch, Context, Model, moved_state

name = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m"
hists = [int(x) for x in sys.argv[2].split(",")] if len(sys.argv) > 2 else [150, 500, 1000]
m = Model(catalog.resolve(name))
b = Batch(256)
scorer = Context(m, n_ctx=1024 + 2048, n_batch=256, n_seq=4, threads=2, flash_attn=False, unified=True)
for main_fa in (False, True):
    main = Context(m, n_ctx=16384, n_batch=256, n_seq=16, threads=2, flash_attn=main_fa)
    bufs = [np.empty(0, np.uint8), np.empty(0, np.uint8)]
    for cells in hists:
        main.seq_rm(1)
        pos = 0
        while pos < cells:
            k = min(256, cells - pos)
            b.clear()
            for i in range(k):
                b.add(1, pos + i, 1, i == k - 1)
            assert main.decode(b) == 0
            pos += k
        ts = []
        for _ in range(40):
            t = time.perf_counter()
            saved = main.seq_save(1, bufs[0])
            bufs[0] = saved.base
            moved = moved_state(saved, True if main_fa else None, bufs[1])
            bufs[1] = moved.base
            scorer.seq_rm(0)
            assert scorer.seq_load(0, moved)
            ts.append((time.perf_counter() - t) * 1000)
        print(f"main cache FA {'on ' if main_fa else 'off'} -> scorer FA off, {cells} cells: "
              f"{statistics.median(ts):.2f} ms")
    main.close()
