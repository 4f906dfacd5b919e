"""CurveZMQ for the server's socket: encryption, and a fixed set of client keys let in (ZAP)."""

from __future__ import annotations

from pathlib import Path

import zmq

from npcai.errors import SettingsError
from npcai.sidecar.settings import Settings


def secure(zctx: zmq.Context, router: zmq.Socket, settings: Settings):
    """Encrypt ``router`` and let in only the allowed clients and the admins; returns (the authenticator thread,
    the server's public key, the admins' Z85 public keys or None without --curve-admin). A bad key file fails
    here, before any model loads. A message's ``User-Id`` is its client's Z85 public key (ZAP's)."""
    from zmq.auth.thread import ThreadAuthenticator

    if not zmq.has("curve"):
        raise SettingsError("this libzmq was built without CurveZMQ; --curve-secret-key cannot work")
    public, secret = load_curve_secret(settings.curve_secret_key)
    allowed = load_curve_allowed(settings.curve_allow)
    admins = load_curve_allowed(settings.curve_admin, flag="--curve-admin") if settings.curve_admin else None
    auth = ThreadAuthenticator(zctx)
    auth.start()
    auth.configure_curve_callback("*", _AllowList(allowed | (admins or set())))
    router.curve_secretkey = secret
    router.curve_publickey = public
    router.curve_server = True
    return auth, public.decode(), None if admins is None else {k.decode() for k in admins}


class _AllowList:
    """zmq.auth credentials provider: a fixed set of Z85 client public keys."""

    def __init__(self, keys: set[bytes]):
        self.keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


def load_curve_secret(path: str) -> tuple[bytes, bytes]:
    """The (public, secret) Z85 keys of a zmq.auth secret certificate file."""
    import zmq.auth

    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise SettingsError(f"bad --curve-secret-key {path!r}: {exc}") from None
    if not secret:
        raise SettingsError(f"bad --curve-secret-key {path!r}: a public certificate; give the .key_secret file")
    return public, secret


def load_curve_allowed(path: str, flag: str = "--curve-allow") -> set[bytes]:
    """Z85 public keys from one certificate file or every ``*.key`` file of a directory."""
    import zmq.auth

    p = Path(path)
    files = sorted(p.glob("*.key")) if p.is_dir() else [p]
    keys: set[bytes] = set()
    for f in files:
        try:
            keys.add(zmq.auth.load_certificate(f)[0])
        except (OSError, ValueError) as exc:
            raise SettingsError(f"bad {flag} {path!r}: {f.name}: {exc}") from None
    if not keys:
        raise SettingsError(f"bad {flag} {path!r}: no public certificates (*.key) there")
    return keys
