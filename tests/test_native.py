"""llama.cpp runs on the machine it finds: a batched step never crashes the sidecar."""

import subprocess
import sys
import textwrap

import pytest

from npcai.errors import ModelError
from npcai.model import native

XEON = b"CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | AMX_INT8 = 1 | OPENMP = 1 | REPACK = 1 | "
EPYC = b"CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | OPENMP = 1 | REPACK = 1 | "


def test_a_batched_step_runs_on_this_machines_cpu(model_path):
    # In a child process, so that a crash inside llama.cpp fails this test instead of the run.
    script = textwrap.dedent(f"""
        from npcai.model.native import Batch, Context, Model
        m = Model({str(model_path)!r})
        ctx = Context(m, n_ctx=1024, n_batch=64, n_seq=2, threads=2)
        b = Batch(64)
        for i in range(48):
            b.add(1, i // 2, i % 2, i >= 46)  # two sequences, 24 tokens each
        print(ctx.decode(b), ctx.logits(b.n - 1, m.n_vocab).shape[0] == m.n_vocab)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.split() == ["0", "True"], (done.returncode, done.stderr[-2000:])


def test_weights_stay_out_of_llama_cpps_amx_buffer_on_cpus_with_amx():
    # Its AMX matmul crashes on the first step of two tokens or more (ggml-org/llama.cpp#20824).
    assert native._has_amx(XEON) and not native._has_amx(EPYC)
    assert native.model_params().use_extra_bufts == (not native._has_amx(native.L.llama_print_system_info()))


def test_a_kv_cache_larger_than_the_available_memory_is_refused_in_one_line(model, monkeypatch):
    """--n-ctx 1048576 on SmolLM2 asks for 22.5 GiB: the kernel gave it lazily, and killed the sidecar without a
    word once the cache filled (sometimes after READY). The KV cache's size is known before it is made."""
    assert model.kv_bytes_per_cell() == 30 * 2 * 64 * 3 * 2  # SmolLM2-135M: 30 layers, 3 KV heads of 64, f16
    monkeypatch.setattr(native, "_available_memory", lambda: 512 << 20)
    with pytest.raises(ModelError, match=r"^a KV cache of n_ctx=65536 cells needs 1\.4 GiB and this machine has "
                                         r"0\.5 GiB available: lower --n-ctx$"):
        native.Context(model, n_ctx=65536, n_batch=64, n_seq=2, threads=1)
    native.Context(model, n_ctx=4096, n_batch=64, n_seq=2, threads=1).close()  # 90 MiB: made
