"""llama.cpp runs on the machine it finds: a batched step never crashes the sidecar."""

import subprocess
import sys
import textwrap

from npcai.model import native

XEON = {"avx2": True, "avx512f": True, "avx512vnni": True, "amx-bf16": True, "amx-tile": True, "amx-int8": True}
EPYC = {"avx2": True, "avx512f": True, "avx512vnni": True, "amx-int8": False}


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
    assert native.model_params().use_extra_bufts == (not native._has_amx(native._cpu_features()))
