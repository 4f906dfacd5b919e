"""``--model ROLE=URL``: an OpenAI-compatible base URL, an optional ``#model`` and ``?engine=``."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from npcai.errors import SettingsError

ENGINES = ("llamacpp", "vllm", "sglang")


@dataclass(frozen=True)
class RemoteSpec:
    """Where a remote role is served: ``base_url`` ends in the API's version path (e.g. ``/v1``)."""

    role: str
    base_url: str
    model: str = ""  # empty: the first model the server lists
    engine: str = ""  # empty: detected from the server

    @property
    def root(self) -> str:
        """The server's root, where engines keep their own endpoints (``/props``, ``/version``)."""
        parts = urlsplit(self.base_url)
        return f"{parts.scheme}://{parts.netloc}"


@dataclass(frozen=True)
class Served:
    """What the server said about itself at start-up."""

    engine: str
    model: str
    chat_template: str = ""  # llama-server reports its template in /props
    bos_token: str = ""
    eos_token: str = ""
    version: str = ""  # vLLM reports its version at /version: older ones take other guided-decoding fields


@dataclass(frozen=True)
class Remote:
    """A remote role as the CLI resolved it at start-up: where, what the server said, and the API key."""

    spec: RemoteSpec
    served: Served
    key: str = ""

    def __repr__(self) -> str:  # never the key
        return f"Remote({self.spec!r}, {self.served.engine}, {self.served.model!r})"


def is_remote(name: str) -> bool:
    """Whether a --model NAME is a URL rather than a catalog name or a GGUF path."""
    return "://" in name


def parse(role: str, url: str) -> RemoteSpec:
    """A RemoteSpec, or SettingsError naming what is wrong with the URL in one line."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise SettingsError(f"bad --model {role}={url}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"bad --model {role}={url}: a remote model is an http:// or https:// URL with a host, "
                            "e.g. http://gpu-box:8000/v1")
    if parts.username or parts.password:
        raise SettingsError(f"bad --model {role}=...: no credentials in the URL; use --remote-key-file or "
                            "$NPCAI_REMOTE_KEY")
    model, _, tail = parts.fragment.partition("?")  # "#model?engine=vllm" reads as well as "?engine=vllm#model"
    query = parse_qs("&".join(q for q in (parts.query, tail) if q), keep_blank_values=True)
    unknown = sorted(set(query) - {"engine"})
    if unknown:
        raise SettingsError(f"bad --model {role}={url}: unknown URL option {unknown[0]!r} (known: engine)")
    engine = query.get("engine", [""])[-1]
    if engine and engine not in ENGINES:
        raise SettingsError(f"bad --model {role}={url}: unknown engine {engine!r} (known: {', '.join(ENGINES)})")
    netloc = parts.hostname if port is None else f"{parts.hostname}:{port}"
    if ":" in parts.hostname:  # an IPv6 literal
        netloc = f"[{parts.hostname}]" + ("" if port is None else f":{port}")
    base = f"{parts.scheme}://{netloc}{parts.path.rstrip('/') or '/v1'}"
    return RemoteSpec(role, base, model, engine)
