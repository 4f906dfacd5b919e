"""One settings schema for the sidecar: defaults, docs, and the CLI flags come from here."""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from npcai.errors import SettingsError
from npcai.protocol import Limits, budget_out_of_bounds

if TYPE_CHECKING:
    from npcai.sidecar.budget import Budget


def _shipped_grammar_dir() -> Path:
    """The shipped grammars: package data npcai/grammars/ in an installed wheel (pyproject.toml maps the
    checkout's grammars/ there), else grammars/ beside the package in a checkout or editable install."""
    packaged = resources.files("npcai") / "grammars"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "grammars"


#: Where grammar names in ``decide`` are looked up when no --grammar-dir is given.
DEFAULT_GRAMMAR_DIR = _shipped_grammar_dir()


#: Each field of the budget (the budget op's) and the setting that gives it at start.
_BUDGET_FLAGS = {"threads": "budget_threads", "tokens_per_s": "budget_tokens_per_s", "share": "budget_share",
                 "frame_ms": "frame_ms"}


def _opt(help: str, **kw) -> dict:
    """Field metadata: argparse keywords, plus ``min`` and ``max``, the smallest and largest values that can work
    (a float flag must be finite as well)."""
    return {"help": help, **kw}


@dataclass
class Settings:
    """Everything `npcai serve` can be told. Each field is a --flag of the same name."""

    endpoint: str = field(default="tcp://127.0.0.1:0", metadata=_opt(
        "ZeroMQ endpoint to bind (port 0 picks a free port; the bound endpoint is printed)"))
    model: list[str] = field(default_factory=list, metadata=_opt(
        "model, as NAME or ROLE=NAME (NAME is a catalog name, a .gguf path, or an OpenAI-compatible engine's "
        "URL like http://gpu-box:8000/v1[#MODEL][?engine=vllm|sglang|llamacpp]); repeat for several roles",
        action="append"))
    lora: list[str] = field(default_factory=list, metadata=_opt(
        "a LoRA adapter for a role's choice decisions, as ROLE=NAME (a shipped adapter, e.g. "
        "decision=smollm2-135m-decision) or ROLE=PATH (a llama.cpp LoRA GGUF); dialogue is left as it is; "
        "repeat for several roles", action="append"))
    role_info: list[str] = field(default_factory=list, metadata=_opt(
        "a role's one-line description, as ROLE=\"what it is for\", for chain steps of kind route; repeat per role",
        action="append"))
    remote_key_file: str = field(default="", metadata=_opt(
        "a file holding the API key for remote engines (else $NPCAI_REMOTE_KEY; never on the command line)"))
    remote_connections: int = field(default=64, metadata=_opt(
        "requests in flight to each remote engine server at once; beyond it clients take turns", min=1))
    client_tokens_per_s: float = field(default=0.0, metadata=_opt(
        "most streamed tokens per second for one client from remote roles (0 = no cap)", min=0))
    n_ctx: int = field(default=16384, metadata=_opt(
        "KV cache cells per model, shared equally by its --n-seq sequences", min=64, max=1 << 20))
    npc_ctx: int = field(default=1024, metadata=_opt(
        "context window of one NPC: persona + history + request; oldest turns give way beyond it", min=64))
    n_seq: int = field(default=16, metadata=_opt(
        "KV sequences per model: resident NPCs plus decisions in flight (idle NPCs give way beyond it)", min=2))
    park_mb: int = field(default=256, metadata=_opt(
        "host memory (MiB) for the KV cells of idle NPCs that gave way their sequence: copied back when "
        "they speak again instead of evaluated again (0 = evaluate again)", min=0))
    n_batch: int = field(default=256, metadata=_opt("most tokens evaluated in one model step", min=1))
    flash_attn: str = field(default="auto", metadata=_opt(
        "flash attention in each model's main KV cache: on (many NPCs' streams run faster), off (prompts after "
        "long histories run faster), or auto (the catalog's measured choice; llama.cpp's for other files); "
        "choice decisions keep the catalog's choice for their own cache", choices=("auto", "on", "off")))
    scoring_weights: str = field(default="auto", metadata=_opt(
        "the weights choice and action decisions are scored on: auto (for a catalog model, a BF16 copy where "
        "llama.cpp has BF16 matrix kernels, AVX512_BF16: a choice about 0.65x as long, for the copy's memory, "
        "260 MiB with SmolLM2; else the model's own) or main (the model's own)", choices=("auto", "main")))
    threads: int = field(default=0, metadata=_opt(
        "compute threads (0 = all cores but one, leaving the game a core; at least 1)", min=0, max=512))
    nice: int = field(default=10, metadata=_opt(
        "lower the sidecar's CPU priority below the game's by this much (POSIX nice; Windows: below normal)",
        min=0, max=19))
    cpus: str = field(default="", metadata=_opt("pin compute to these CPU ids, e.g. 2,3 (Linux)"))
    budget_threads: int = field(default=0, metadata=_opt("budget: most compute threads (0 = --threads)",
                                                         max=512))  # ggml's most
    budget_tokens_per_s: float = field(default=0.0,
                                       metadata=_opt("budget: most dialogue tokens per second (0 = no cap)"))
    budget_share: float = field(default=1.0, metadata=_opt(
        "budget: share of wall time the sidecar may compute, from 0.01 to 1"))
    frame_ms: float = field(default=0.0, metadata=_opt(
        "the game's target frame time, up to 1000 (0 = none); with frame reports, the sidecar backs off when "
        "frames run over"))
    grammar_dir: str = field(default=str(DEFAULT_GRAMMAR_DIR), metadata=_opt(
        "directory where decide's grammar names are looked up"))
    parent_pid: int = field(default=0, metadata=_opt("exit when this process dies (the game's pid)", min=0))
    lease_ms: int = field(default=0, metadata=_opt(
        "after the first hello, exit when no client has been heard from for this long (0 = no lease; "
        "clients send ping)", min=0))
    ready_file: str = field(default="", metadata=_opt(
        "also write the bound endpoint to this file when ready (for launchers that cannot read stdout); "
        "removed on exit"))
    connection_file: str = field(default="", metadata=_opt(
        "write {endpoint, token, pid} as JSON to this file (mode 0600) when ready, generating a token if "
        "neither --token nor $NPCAI_TOKEN gives one; removed on exit"))
    token: str = field(default="", metadata=_opt(
        "shared secret clients must send in hello; prefer $NPCAI_TOKEN, read when this is not given: a "
        "flag's value is in the process list, for any user of the machine to read"))
    allow_remote: bool = field(default=False, metadata=_opt(
        "allow binding a non-loopback endpoint (needs --curve-secret-key and --curve-allow)",
        action="store_true"))
    curve_secret_key: str = field(default="", metadata=_opt(
        "CurveZMQ: the sidecar's secret certificate file (NAME.key_secret from zmq.auth.create_certificates)"))
    curve_allow: str = field(default="", metadata=_opt(
        "CurveZMQ: a client's public certificate file (NAME.key), or a directory of them: only these get in"))
    curve_admin: str = field(default="", metadata=_opt(
        "CurveZMQ: an admin's public certificate file, or a directory of them: they get in too, and with this flag "
        "only they may shutdown the sidecar, set its budget or report frames"))
    max_frame_bytes: int = field(default=Limits.max_frame_bytes, metadata=_opt(
        "largest accepted frame", min=256, max=1 << 30))  # twice it is libzmq's int64 MAXMSGSIZE
    max_inflight_per_client: int = field(default=Limits.max_inflight_per_client, metadata=_opt(
        "requests one client may have open at once", min=1))
    max_queue: int = field(default=Limits.max_queue, metadata=_opt(
        "clients' open requests, in all (the sidecar's own work ahead is not counted)", min=1))
    max_npcs: int = field(default=Limits.max_npcs, metadata=_opt("NPCs defined at once", min=1))
    max_prompt_tokens: int = field(default=Limits.max_prompt_tokens, metadata=_opt(
        "tokens one request's text may add to the prompt", min=1))
    verbose: bool = field(default=False, metadata=_opt("log warnings and internal errors in more detail",
                                                       action="store_true"))

    @property
    def limits(self) -> Limits:
        return Limits(
            max_frame_bytes=self.max_frame_bytes,
            max_inflight_per_client=self.max_inflight_per_client,
            max_queue=self.max_queue,
            max_npcs=self.max_npcs,
            max_prompt_tokens=self.max_prompt_tokens,
        )

    @property
    def budget(self) -> "Budget":
        from npcai.sidecar.budget import Budget

        return Budget(**{name: getattr(self, flag) for name, flag in _BUDGET_FLAGS.items()})

    @property
    def compute_threads(self) -> int:
        """Leave a core to the game: all but one of the cores this process may use."""
        if self.threads > 0:
            return self.threads
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cores = os.cpu_count() or 1
        return max(1, cores - 1)

    def cpu_ids(self) -> list[int] | None:
        """--cpus as CPU ids (None: not pinned); each one must be a CPU this machine has."""
        if not self.cpus:
            return None
        try:
            ids = [int(c) for c in self.cpus.split(",") if c.strip()]
        except ValueError:
            ids = []
        if not ids:
            raise SettingsError(f"bad --cpus {self.cpus!r}: give CPU ids like 2,3")
        known = _machine_cpus()
        missing = [c for c in dict.fromkeys(ids) if c not in known]
        if missing:
            raise SettingsError(f"bad --cpus {self.cpus!r}: no CPU {', '.join(map(str, missing))} on this machine "
                                f"(its CPUs are {_id_ranges(known)})")
        return ids

    def roles_described(self) -> dict[str, str]:
        """--role-info as role -> description."""
        out = {}
        for spec in self.role_info:
            role, sep, text = spec.partition("=")
            if not sep or not role.strip().isidentifier() or not text.strip():
                raise SettingsError(f"bad --role-info {spec!r}: give ROLE=\"a one-line description\"")
            out[role.strip()] = text.strip()
        return out

    def validate(self) -> None:
        """Refuse values that cannot work, each in one line, before any model is loaded."""
        for f in fields(self):
            low, high = f.metadata.get("min"), f.metadata.get("max")
            value = getattr(self, f.name)
            flag = f"--{f.name.replace('_', '-')}"
            bounded = low is not None or high is not None  # the budget's flags: budget_out_of_bounds, below
            if bounded and isinstance(value, float) and not math.isfinite(value):
                raise SettingsError(f"bad {flag} {value}: must be a finite number")
            if low is not None and value < low:
                raise SettingsError(f"bad {flag} {value}: must be at least {low}")
            if high is not None and value > high:
                raise SettingsError(f"bad {flag} {value}: must be at most {high}")
            allowed = f.metadata.get("choices")
            if allowed is not None and value not in allowed:
                raise SettingsError(f"bad --{f.name.replace('_', '-')} {value!r}: use {', '.join(allowed)}")
        if self.npc_ctx > self.n_ctx // self.n_seq:
            raise SettingsError(f"bad --npc-ctx {self.npc_ctx}: must not exceed --n-ctx / --n-seq "
                                f"({self.n_ctx} / {self.n_seq} = {self.n_ctx // self.n_seq} cells per sequence)")
        wrong = budget_out_of_bounds(asdict(self.budget))  # the budget op's own rule
        if wrong is not None:
            flag = _BUDGET_FLAGS[wrong[0]]
            raise SettingsError(f"bad --{flag.replace('_', '-')} {getattr(self, flag):g}: must be {wrong[1]}")
        self.cpu_ids()
        self.roles_described()
        if not Path(self.grammar_dir).is_dir():
            raise SettingsError(f"bad --grammar-dir {self.grammar_dir!r}: not a directory")
        for name in ("ready_file", "connection_file"):
            path = getattr(self, name)
            if path and not Path(path).absolute().parent.is_dir():
                raise SettingsError(f"bad --{name.replace('_', '-')} {path!r}: its directory does not exist")
        curve = bool(self.curve_secret_key or self.curve_allow)
        if curve and not (self.curve_secret_key and self.curve_allow):
            raise SettingsError("--curve-secret-key and --curve-allow go together")
        if self.remote_key_file and not Path(self.remote_key_file).is_file():
            raise SettingsError(f"bad --remote-key-file {self.remote_key_file!r}: no such file")
        if self.curve_admin and not curve:
            raise SettingsError("--curve-admin needs --curve-secret-key and --curve-allow")
        for name in ("curve_secret_key", "curve_allow", "curve_admin"):
            path = getattr(self, name)
            if path and not Path(path).exists():
                raise SettingsError(f"bad --{name.replace('_', '-')} {path!r}: no such file or directory")
        if self.allow_remote and not curve:
            raise SettingsError("--allow-remote needs --curve-secret-key and --curve-allow: "
                                "a sidecar reachable from other machines must know who its clients are")
        if not is_local_endpoint(self.endpoint) and not self.allow_remote:
            raise SettingsError(f"refusing to bind {self.endpoint}: other machines could reach it; "
                                "bind 127.0.0.1, or pass --allow-remote with Curve keys")

    @classmethod
    def flags(cls):
        """(flag name, field) pairs for building the CLI."""
        return [(f.name.replace("_", "-"), f) for f in fields(cls)]


def _machine_cpus() -> set[int]:
    """The CPU ids this machine has: 0 up to the CPU count, and any other this process may run on."""
    cpus = set(range(os.cpu_count() or 1))
    if hasattr(os, "sched_getaffinity"):  # not on macOS or Windows
        cpus |= os.sched_getaffinity(0)
    return cpus


def _id_ranges(ids: set[int]) -> str:
    """CPU ids as the kernel lists them: 0-3,6."""
    runs: list[list[int]] = []
    for i in sorted(ids):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


_TCP = re.compile(r"^tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/\[\]]+):(?P<port>\*|\d{1,5})$")


def is_local_endpoint(endpoint: str) -> bool:
    """True for loopback TCP and for ipc; SettingsError for text that is not an endpoint at all."""
    if endpoint.startswith("ipc://") and len(endpoint) > len("ipc://"):
        return True  # a Unix socket: local by nature, guarded by file permissions
    m = _TCP.match(endpoint)
    if not m or (m["port"] != "*" and int(m["port"]) > 65535):
        raise SettingsError(f"bad --endpoint {endpoint!r}: expected tcp://HOST:PORT (e.g. tcp://127.0.0.1:0) "
                            "or ipc://PATH")
    host = m["host"].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface or a host name: may be reachable from other machines
