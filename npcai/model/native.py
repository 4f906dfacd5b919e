"""Thin wrappers over llama.cpp's native handles (model, context, batch).

Each native handle is wrapped once and freed by an idempotent ``close()``; the rest of
npcai talks to these wrappers, never to ``llama_cpp`` directly.
"""

from __future__ import annotations

import contextlib
import ctypes
import struct
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import llama_cpp as L
import numpy as np

from npcai.errors import ModelError

_backend_lock = threading.Lock()
_backend_ready = False


# What llama.cpp logs as an error when we abort a step on purpose (cancel, preemption).
_ABORT_NOISE = (b"graph_compute:", b"failed to compute graph", b"failed to decode, ret = 2")


_captured: list[str] | None = None  # while set, llama.cpp's errors are collected here instead of printed


@L.llama_log_callback
def _quiet_log(level, text, user_data):  # llama.cpp is chatty on stderr; keep errors only
    if level == 4 and not any(n in text for n in _ABORT_NOISE):  # GGML_LOG_LEVEL_ERROR
        if _captured is not None:
            _captured.append(text.decode(errors="replace").strip())
        else:
            print(text.decode(errors="replace"), end="", file=sys.stderr, flush=True)


@contextlib.contextmanager
def llama_errors():
    """Collect the errors llama.cpp logs inside the block (for a one-line message of our own) instead of
    printing them. Not for use beside running steps: every thread's llama.cpp errors are collected."""
    global _captured
    _captured = found = []
    try:
        yield found
    finally:
        _captured = None


def _init_backend() -> None:
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            L.llama_backend_init()
            _backend_ready = True
        L.llama_log_set(_quiet_log, ctypes.c_void_p(0))


def _has_amx(system_info: bytes) -> bool:
    """Whether llama.cpp was built with its AMX kernels (``llama_print_system_info`` lists AMX_INT8): only
    such a build has the AMX weight buffer. Asked of llama.cpp itself, on every platform, without loading
    LLVM (the bundled sidecar ships none)."""
    return b"AMX_INT8 = 1" in system_info


# llama.cpp moves weights into an AMX buffer where it was built for a CPU with AMX (Xeon Sapphire
# Rapids and later), and its AMX matmul then crashes the process on the first step of two tokens or
# more (ggml-org/llama.cpp#20824, still open; seen here with llama-cpp-python 0.3.36 on both models).
# Where that buffer exists, weights stay in plain CPU buffers: a little slower, never a crash.
_USE_EXTRA_BUFFERS = not _has_amx(L.llama_print_system_info())


def batch_weights(system_info: bytes | None = None) -> str | None:
    """The weight type whose matrix products evaluate a batch fastest here, where llama.cpp has one beside a
    model's own: BF16 where it was built with AVX512_BF16 (AMD Zen 4 and later, Intel Xeon since Cooper Lake).
    Measured on Zen 5 (docs/PERFORMANCE.md, "Session 15"): a 32-token step 0.58-0.71x of SmolLM2's Q8_0 and
    0.55x of Gemma's Q4_K_M, a single token 1.1-1.4x, so it suits steps of many tokens, an option tree's, and
    not a stream's. Without those instructions ggml converts BF16 as it goes: ``None``."""
    info = L.llama_print_system_info() if system_info is None else system_info
    return "BF16" if b"AVX512_BF16 = 1" in info else None


def model_params():
    """llama.cpp's default model parameters, on the CPU, safe on this machine (see above)."""
    params = L.llama_model_default_params()
    params.n_gpu_layers = 0
    params.use_extra_bufts = _USE_EXTRA_BUFFERS
    return params


@contextlib.contextmanager
def safe_llama_defaults():
    """Have llama-cpp-python's ``Llama`` (the bench's baselines) load with :func:`model_params` too;
    it offers no argument for it."""
    import llama_cpp.llama as high_level

    module = high_level.llama_cpp
    original = module.llama_model_default_params
    module.llama_model_default_params = model_params  # Llama sets its own n_gpu_layers afterwards
    try:
        yield
    finally:
        module.llama_model_default_params = original


def convert_weights(src: Path, dst: Path, weight_type: str, threads: int = 0) -> None:
    """Write ``src``'s weights as ``weight_type`` (a llama.cpp type name such as "Q8_0") to ``dst``."""
    _init_backend()
    params = L.llama_model_quantize_default_params()
    params.ftype = getattr(L, f"LLAMA_FTYPE_MOSTLY_{weight_type}")
    params.allow_requantize = True
    params.nthread = threads
    if L.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise ModelError(f"llama.cpp could not convert {src.name} to {weight_type}")


class Model:
    """Weights and vocabulary of one GGUF file."""

    def __init__(self, path: Path):
        _init_backend()
        params = model_params()
        handle = L.llama_model_load_from_file(str(path).encode(), params)
        if not handle:
            raise ModelError(f"llama.cpp could not load {path} (corrupt or unsupported GGUF?)")
        self._handle = handle
        self.path = Path(path)
        self.vocab = L.llama_model_get_vocab(handle)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = L.llama_model_n_ctx_train(handle)
        self.add_bos = bool(L.llama_vocab_get_add_bos(self.vocab))
        self.eos = L.llama_vocab_eos(self.vocab)
        eot = L.llama_vocab_eot(self.vocab)
        self.eot = eot if eot >= 0 else self.eos
        # Base models ship no template: use llama.cpp's built-in one for the family.
        self.chat_template: bytes = L.llama_model_chat_template(handle, None) or (
            b"gemma" if self.describe().startswith("gemma") else b"chatml")
        self._piece_buf = ctypes.create_string_buffer(256)
        self._pieces: dict[int, bytes] = {}

    @property
    def handle(self):
        if self._handle is None:
            raise RuntimeError("model is closed")
        return self._handle

    def kv_bytes_per_cell(self) -> int:
        """What one KV cache cell holds, K and V in half precision over every layer."""
        h = self.handle
        per_head = L.llama_model_n_embd(h) // max(1, L.llama_model_n_head(h))
        return L.llama_model_n_layer(h) * 2 * per_head * L.llama_model_n_head_kv(h) * 2

    def describe(self) -> str:
        buf = ctypes.create_string_buffer(128)
        L.llama_model_desc(self.handle, buf, 128)
        return buf.value.decode(errors="replace")

    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = True) -> list[int]:
        data = text.encode()
        cap = len(data) + 8
        out = (L.llama_token * cap)()
        n = L.llama_tokenize(self.vocab, data, len(data), out, cap, add_bos and self.add_bos, special)
        if n < 0:
            cap = -n
            out = (L.llama_token * cap)()
            n = L.llama_tokenize(self.vocab, data, len(data), out, cap, add_bos and self.add_bos, special)
        return list(out[:n])

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for; control tokens render as nothing."""
        got = self._pieces.get(token)
        if got is None:
            n = L.llama_token_to_piece(self.vocab, token, self._piece_buf, 256, 0, False)
            got = self._piece_buf.raw[:n] if n > 0 else b""
            self._pieces[token] = got
        return got

    def all_pieces(self) -> list[bytes]:
        """Every token's bytes, with a buffer of its own: safe beside ``piece`` on another thread."""
        buf = ctypes.create_string_buffer(256)
        out = []
        for t in range(self.n_vocab):
            n = L.llama_token_to_piece(self.vocab, t, buf, 256, 0, False)
            out.append(buf.raw[:n] if n > 0 else b"")
        return out

    def is_eog(self, token: int) -> bool:
        return bool(L.llama_vocab_is_eog(self.vocab, token))

    def apply_chat_template(self, messages: list[tuple[str, str]], add_generation_prompt: bool) -> str:
        """Render (role, content) messages with the model's own chat template."""
        keep = [(r.encode(), c.encode()) for r, c in messages]
        chat = (L.llama_chat_message * len(keep))(*[L.llama_chat_message(r, c) for r, c in keep])
        size = sum(len(r) + len(c) for r, c in keep) * 2 + 256
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            n = L.llama_chat_apply_template(self.chat_template, chat, len(keep), add_generation_prompt, buf, size)
            if n < 0:
                raise ModelError(f"llama.cpp cannot apply the chat template of {self.path.name}")
            if n <= size:
                return buf.raw[:n].decode(errors="replace")
            size = n + 1
        raise ModelError("chat template output kept growing")

    def close(self) -> None:
        if self._handle is not None:
            L.llama_model_free(self._handle)
            self._handle = None


class Batch:
    """A reusable llama_batch with numpy views over its token/pos/logits arrays."""

    def __init__(self, capacity: int, n_seq_max: int = 1):
        """``n_seq_max``: the most sequences one token may belong to (see ``add_shared``)."""
        self.capacity = capacity
        self.n_seq_max = n_seq_max
        self._b = L.llama_batch_init(capacity, 0, n_seq_max)
        self.tokens = np.ctypeslib.as_array(self._b.token, shape=(capacity,))
        self.pos = np.ctypeslib.as_array(self._b.pos, shape=(capacity,))
        self.n_seq = np.ctypeslib.as_array(self._b.n_seq_id, shape=(capacity,))
        self.logits = np.ctypeslib.as_array(self._b.logits, shape=(capacity,))
        self._seq_ids = self._b.seq_id
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        """Append one token; returns its row (the index to read its logits with)."""
        i = self.n
        if i >= self.capacity:
            raise OverflowError("batch is full")
        self.tokens[i] = token
        self.pos[i] = pos
        self.n_seq[i] = 1
        self._seq_ids[i][0] = seq
        self.logits[i] = logits
        self.n = i + 1
        return i

    def add_shared(self, token: int, pos: int, seqs: list[int], logits: bool) -> int:
        """Append one token that belongs to every sequence in ``seqs`` (a unified cache only: there
        it is stored and evaluated once, and each of those sequences attends to it)."""
        i = self.n
        if i >= self.capacity:
            raise OverflowError("batch is full")
        if not 0 < len(seqs) <= self.n_seq_max:
            raise ValueError(f"a token belongs to 1 to {self.n_seq_max} sequences, not {len(seqs)}")
        self.tokens[i] = token
        self.pos[i] = pos
        self.n_seq[i] = len(seqs)
        ids = self._seq_ids[i]
        for k, seq in enumerate(seqs):
            ids[k] = seq
        self.logits[i] = logits
        self.n = i + 1
        return i

    @property
    def native(self):
        self._b.n_tokens = self.n
        return self._b

    def close(self) -> None:
        if self._b is not None:
            L.llama_batch_free(self._b)
            self._b = None


def _available_memory() -> int | None:
    """Bytes of memory the kernel could give now (Linux's MemAvailable); None where it cannot tell."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class Context:
    """A llama.cpp context whose KV cache holds ``n_seq`` sequences, each in its own stream of
    ``n_ctx // n_seq`` cells.

    Separate streams, not one shared (unified) cache: attention then reads only a sequence's own
    cells. In a unified cache every token attends over every resident NPC's cells (masked), and
    measured on SmolLM2 a 22-token step went from 41 ms to 76 ms as other NPCs filled 7,000 cells.
    The price is that a fork copies a whole stream (``seq_fork``).
    """

    def __init__(self, model: Model, *, n_ctx: int, n_batch: int, n_seq: int, threads: int,
                 flash_attn: bool | None = None, unified: bool = False, n_ubatch: int | None = None):
        """``unified`` puts all sequences in one cache instead: the option scorer's small cache,
        where a copy of a sequence costs nothing, and the bench's comparison."""
        need, free = n_ctx * model.kv_bytes_per_cell(), _available_memory()
        if free is not None and need > free:  # else the kernel's OOM killer ends it, with no word, after READY
            raise ModelError(f"a KV cache of n_ctx={n_ctx} cells needs {need / 2**30:.1f} GiB and this machine has "
                             f"{free / 2**30:.1f} GiB available: lower --n-ctx")
        params = L.llama_context_default_params()
        if flash_attn is not None:
            params.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_ubatch or n_batch
        params.n_seq_max = n_seq
        params.kv_unified = unified
        params.swa_full = True
        params.n_threads = threads
        params.n_threads_batch = threads
        params.no_perf = True
        handle = L.llama_init_from_model(model.handle, params)
        if not handle:
            raise ModelError(f"llama.cpp could not create a context (n_ctx={n_ctx}, n_seq={n_seq})")
        self._handle = handle
        self.model = model
        self.n_ctx = L.llama_n_ctx(handle)
        self.n_seq = n_seq
        self.threads = threads
        # How the V cache lies: transposed without flash attention, by cell with it (None: llama.cpp chose).
        self.v_transposed = None if flash_attn is None else not flash_attn
        self._mem = L.llama_get_memory(handle)
        self._should_abort = None
        self._abort_cb = L.ggml_abort_callback(lambda _data: bool(self._should_abort and self._should_abort()))
        self._no_cb = ctypes.cast(None, L.ggml_abort_callback)

    @property
    def handle(self):
        if self._handle is None:
            raise RuntimeError("context is closed")
        return self._handle

    def decode(self, batch: Batch) -> int:
        """Evaluate a batch. 0 ok, 1 no KV room, 2 aborted, <0 error (llama_decode's codes)."""
        return L.llama_decode(self.handle, batch.native)

    def logits(self, row: int, n_vocab: int) -> np.ndarray:
        ptr = L.llama_get_logits_ith(self.handle, row)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,))

    def set_abort(self, should_abort) -> None:
        """Let llama.cpp stop a step between graph nodes when ``should_abort()`` turns true.

        Installed only around long steps: the check is a Python call per node.
        """
        self._should_abort = should_abort
        L.llama_set_abort_callback(self.handle, self._abort_cb if should_abort else self._no_cb, None)

    def set_threads(self, threads: int) -> None:
        self.threads = threads
        L.llama_set_n_threads(self.handle, threads, threads)

    def apply_lora(self, adapter) -> None:
        """Apply a LoRA adapter (llama.cpp's handle, loaded for this context's model) to its every step."""
        if L.llama_set_adapters_lora(self.handle, (L.llama_adapter_lora_p_ctypes * 1)(adapter), 1,
                                     (ctypes.c_float * 1)(1.0)) != 0:
            raise ModelError("llama.cpp could not apply the LoRA adapter to a context")

    # --- sequences -----------------------------------------------------------
    def seq_rm(self, seq: int, p0: int = 0, p1: int = -1) -> None:
        L.llama_memory_seq_rm(self._mem, seq, p0, p1)

    def seq_fork(self, src: int, dst: int, n: int) -> None:
        """Make ``dst`` a copy of the first ``n`` cells of ``src``. Across streams llama.cpp copies
        whole streams only, so the copy is trimmed afterwards."""
        L.llama_memory_seq_rm(self._mem, dst, -1, -1)
        L.llama_memory_seq_cp(self._mem, src, dst, -1, -1)
        L.llama_memory_seq_rm(self._mem, dst, n, -1)

    def seq_pos_max(self, seq: int) -> int:
        return L.llama_memory_seq_pos_max(self._mem, seq)

    def seq_save(self, seq: int, into: np.ndarray | None = None) -> bytes | np.ndarray:
        """A sequence's saved cells: as bytes, or as a uint8 array, a view of ``into`` when it is large
        enough (callers that move cells often reuse one: fresh buffers cost page faults), else new."""
        size = L.llama_state_seq_get_size(self.handle, seq)
        if into is None:
            buf = (ctypes.c_uint8 * size)()
            n = L.llama_state_seq_get_data(self.handle, buf, size, seq)
            return ctypes.string_at(buf, n)
        if len(into) < size:
            into = np.empty(size + size // 4, dtype=np.uint8)  # room to grow
        n = L.llama_state_seq_get_data(self.handle, into.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)), size, seq)
        return into[:n]

    def seq_copy(self, src: int, dst: int, n: int) -> None:
        """In a unified cache: ``dst`` shares the first ``n`` cells of ``src`` (no data moves)."""
        L.llama_memory_seq_cp(self._mem, src, dst, 0, n)

    def seq_load(self, seq: int, data: bytes | np.ndarray) -> bool:
        if len(data) == 0:
            return False
        if isinstance(data, np.ndarray):  # read in place
            return L.llama_state_seq_set_data(self.handle, data.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)),
                                              len(data), seq) > 0
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        return L.llama_state_seq_set_data(self.handle, buf, len(data), seq) > 0

    def close(self) -> None:
        if self._handle is not None:
            L.llama_free(self._handle)
            self._handle = None


_STATE_HEADER = 8  # llama_state_seq_get_data: a magic and the sequence id (32 bits each), then the KV cache's state


def moved_state(state: bytes | memoryview | np.ndarray, transposed: bool | None = None,
                out: np.ndarray | None = None) -> np.ndarray:
    """A sequence's saved state from a cache with a stream per sequence, rewritten for a unified cache
    whose V lies ``transposed`` or not (None: as saved). Returns the rewritten bytes as a uint8 array:
    a view of ``out`` when it is large enough (a scorer reuses one: a fresh 20 MB buffer per move
    costs as much in page faults as the copy), else a new array.

    Streams: each KV cache writes a sequence's cells as ``n_stream`` (uint32), then per stream a cell
    count (uint32) followed, where it is not zero, by those cells; llama.cpp refuses a state whose
    stream count differs from its own cache's ("n_stream mismatch"). A sequence's cells are all in one
    stream, so the rewrite keeps that stream's count and cells and says there is one stream. A model
    with sliding-window layers (Gemma 3) has two caches, written one after the other: each is rewritten.

    V's layout: llama.cpp also refuses a state whose V layout differs from its cache's, transposed
    without flash attention and by cell with it. After the cells' positions and sequence ids come each
    layer's K rows (type, row size, one row per cell), then each layer's V, either as rows per cell
    (type, row size, rows) or, transposed, per value (type, element size, values per cell, then each
    value for every cell). Both headers are 12 bytes, so the rewrite transposes each V block in place
    and keeps every offset. Plain (f32, f16, bf16) V only, as the layout's elements are single values.

    The layout is llama.cpp's (pinned with llama-cpp-python); ``tests/test_scoring.py`` checks that a
    moved sequence gives the same logits.
    """
    src = np.frombuffer(state, dtype=np.uint8)
    try:
        caches = []  # per cache: its one stream's (start, layout), start at the cell count, or None when empty
        off = _STATE_HEADER
        while off < len(src):
            (n_stream,) = struct.unpack_from("<I", src, off)
            off += 4
            cells = None
            for _ in range(n_stream):
                (count,) = struct.unpack_from("<I", src, off)
                if count:
                    if cells is not None:
                        raise ModelError("a saved sequence spans several KV streams")
                    cells = (off, _Cells.read(src, off))
                    off = cells[1].end
                else:
                    off += 4
            caches.append(cells)
        n = _STATE_HEADER + sum(4 + (c[1].end - c[0] if c else 4) for c in caches)
        dst = out[:n] if out is not None and len(out) >= n else np.empty(n + n // 4, dtype=np.uint8)[:n]
        dst[:_STATE_HEADER] = src[:_STATE_HEADER]
        at = _STATE_HEADER
        for c in caches:
            struct.pack_into("<I", dst, at, 1)  # one stream
            if c is None:
                struct.pack_into("<I", dst, at + 4, 0)
                at += 8
                continue
            begin, layout = c
            dst[at + 4:at + 4 + layout.end - begin] = src[begin:layout.end]
            if transposed is not None and layout.v_transposed != transposed:
                layout.relay_v(src, dst, at + 4 - begin)
            at += 4 + layout.end - begin
        return dst
    except struct.error as e:
        raise ModelError(f"unexpected saved KV state ({e})") from None


#: Value types whose V cache a state can be relaid out for: one element per value (no quantized blocks).
_PLAIN_V_TYPES = {0: "<u4", 1: "<u2", 30: "<u2"}  # ggml types f32, f16, bf16


@dataclass
class _Cells:
    """Where one stream's saved cells lie: positions and sequence ids, each layer's K, then each layer's V."""

    cells: int
    data: int  # V's layout flag and the layer count, then K
    v: list[int]  # each layer's V header
    v_transposed: bool
    end: int

    @classmethod
    def read(cls, src: np.ndarray, off: int) -> "_Cells":
        """``off`` at the cell count. Models with cell extras (2D positions) are not handled."""
        (cells,) = struct.unpack_from("<I", src, off)
        off += 4
        for _ in range(cells):
            _pos, n_ids = struct.unpack_from("<iI", src, off)
            off += 8 + 4 * n_ids
        data = off
        v_trans, n_layer = struct.unpack_from("<II", src, off)
        if v_trans not in (0, 1):
            raise ModelError("unexpected saved KV state (cells with extras?)")
        off += 8
        for _ in range(n_layer):  # K: one row per cell, whatever V's layout
            _type, row = struct.unpack_from("<iQ", src, off)
            off += 12 + cells * row
        v = []
        for _ in range(n_layer):
            v.append(off)
            if v_trans:
                _type, size, width = struct.unpack_from("<iII", src, off)
                off += 12 + cells * size * width
            else:
                _type, row = struct.unpack_from("<iQ", src, off)
                off += 12 + cells * row
        if off > len(src):
            raise ModelError("unexpected saved KV state (size)")
        return cls(cells, data, v, bool(v_trans), off)

    def relay_v(self, src: np.ndarray, dst: np.ndarray, shift: int) -> None:
        """Write these cells' V the other way round into ``dst`` (a copy of ``src`` moved by ``shift``)."""
        transposed = not self.v_transposed
        struct.pack_into("<I", dst, self.data + shift, int(transposed))
        for off in self.v:
            if self.v_transposed:
                v_type, size, width = struct.unpack_from("<iII", src, off)
            else:
                v_type, row = struct.unpack_from("<iQ", src, off)
                size = np.dtype(_PLAIN_V_TYPES.get(v_type, "<u2")).itemsize
                width = row // size
            dtype = _PLAIN_V_TYPES.get(v_type)
            if dtype is None or np.dtype(dtype).itemsize != size:
                raise ModelError(f"cannot relay out a V cache of ggml type {v_type}")
            if transposed:
                struct.pack_into("<iII", dst, off + shift, v_type, size, width)
            else:
                struct.pack_into("<iQ", dst, off + shift, v_type, width * size)
            n = self.cells * width * size
            values = src[off + 12:off + 12 + n].view(dtype)
            into = dst[off + shift + 12:off + shift + 12 + n].view(dtype)
            if self.v_transposed:  # per value -> per cell
                np.copyto(into.reshape(self.cells, width), values.reshape(width, self.cells).T)
            else:
                np.copyto(into.reshape(width, self.cells), values.reshape(self.cells, width).T)
