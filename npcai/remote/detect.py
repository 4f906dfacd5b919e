"""Which engine serves a URL, and which model: asked of the server once, at start-up.

Each engine answers at an endpoint of its own: llama.cpp's ``llama-server`` at ``/props``, vLLM at
``/version``, SGLang at ``/get_model_info``, and llama-cpp-python's server names itself in its
OpenAPI title ("llama.cpp Python API"). ``?engine=`` on the URL skips the guessing.
"""

from __future__ import annotations

import httpx

from npcai.errors import SettingsError
from npcai.remote.http import probe
from npcai.remote.spec import RemoteSpec, Served


def connect(spec: RemoteSpec, key: str) -> Served:
    """Ask the server for its models (and, unless given, its engine); SettingsError in one line if it
    cannot be reached or is not an OpenAI-compatible server."""
    where = f"--model {spec.role}={spec.base_url}"
    resp = probe(spec.base_url + "/models", key)
    if isinstance(resp, str):
        hint = " (is it running?)" if resp.startswith("cannot connect") else ""
        raise SettingsError(f"{where}: cannot reach the server: {resp}{hint}")
    if resp.status_code in (401, 403):
        raise SettingsError(f"{where}: the server refused the API key ({resp.status_code}); "
                            "see --remote-key-file / $NPCAI_REMOTE_KEY")
    try:
        models = [m["id"] for m in resp.json()["data"]] if resp.status_code == 200 else []
    except (ValueError, KeyError, TypeError):
        models = []
    if not models:
        raise SettingsError(f"{where}: not an OpenAI-compatible server (GET /models answered "
                            f"{resp.status_code} without a model list)")
    if spec.model and spec.model not in models:
        raise SettingsError(f"{where}: the server has no model {spec.model!r} (it serves: {', '.join(models[:5])})")
    model = spec.model or models[0]
    engine = spec.engine or _guess(spec, key)
    if not engine:
        raise SettingsError(f"{where}: cannot tell which engine this is; add ?engine=vllm, ?engine=sglang or "
                            "?engine=llamacpp to the URL")
    if engine == "vllm":
        return Served(engine, model, version=_version(spec, key))
    props = _answer(spec.root + "/props", key) if engine == "llamacpp" else None
    if props is not None:
        try:
            p = props.json()
            return Served(engine, model, str(p.get("chat_template") or ""), str(p.get("bos_token") or ""),
                          str(p.get("eos_token") or ""))
        except ValueError:
            pass
    return Served(engine, model)


def _answer(url: str, key: str) -> httpx.Response | None:
    """The 200 answer at ``url``, or None (another status, or no answer: the engine lacks the endpoint)."""
    resp = probe(url, key)
    return resp if isinstance(resp, httpx.Response) and resp.status_code == 200 else None


def _guess(spec: RemoteSpec, key: str) -> str:
    resp = _answer(spec.root + "/props", key)
    if resp is not None and _json_has(resp, "default_generation_settings"):
        return "llamacpp"
    resp = _answer(spec.root + "/version", key)
    if resp is not None and _json_has(resp, "version"):
        return "vllm"
    resp = _answer(spec.root + "/get_model_info", key)
    if resp is not None and _json_has(resp, "model_path"):
        return "sglang"
    resp = _answer(spec.root + "/openapi.json", key)
    if resp is not None:
        try:
            if "llama.cpp" in str(resp.json().get("info", {}).get("title", "")):
                return "llamacpp"
        except (ValueError, AttributeError):
            pass
    return ""


def _version(spec: RemoteSpec, key: str) -> str:
    """vLLM's version (``GET /version``: {"version": "0.10.1"}), or "" when it does not say."""
    resp = _answer(spec.root + "/version", key)
    if resp is None or not _json_has(resp, "version"):
        return ""
    return str(resp.json()["version"])


def _json_has(resp, key: str) -> bool:
    try:
        data = resp.json()
    except ValueError:
        return False
    return isinstance(data, dict) and key in data
