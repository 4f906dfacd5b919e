"""The `npcai` command: serve, demo, chat, models, bench, bundle.

User mistakes end with one clear line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
from pathlib import Path

from npcai.errors import NpcaiError
from npcai.model import catalog
from npcai.protocol import TOKEN_ENV
from npcai.sidecar.budget import be_polite
from npcai.sidecar.settings import Settings


def _add_settings(p: argparse.ArgumentParser) -> None:
    for flag, f in Settings.flags():
        meta = dict(f.metadata)
        help_text = meta.pop("help")
        for bound in ("min", "max"):  # checked by Settings.validate, with the same one-line message for flags and code
            meta.pop(bound, None)
        if f.type in (bool, "bool"):
            p.add_argument(f"--{flag}", dest=f.name, help=help_text, **meta)
        elif meta.get("action") == "append":
            p.add_argument(f"--{flag}", dest=f.name, help=help_text, metavar="SPEC", **meta)
        else:
            kind = {"int": int, "str": str, "float": float}.get(str(f.type), str)
            p.add_argument(f"--{flag}", dest=f.name, type=kind, default=f.default,
                           help=f"{help_text} (default: {f.default})", **meta)


def settings_from(args: argparse.Namespace) -> Settings:
    s = Settings()
    for _, f in Settings.flags():
        value = getattr(args, f.name, None)
        if value is not None:
            setattr(s, f.name, value)
    return s


def model_roles(specs: list[str], *, out=None, remote_key: str = "", notes: list[str] | None = None) -> dict:
    """Parse --model specs (NAME or ROLE=NAME) into role -> GGUF path, pulling catalog models, or role ->
    ``Remote`` for an engine's URL (asked at once what it serves: npcai/remote/). Notes on the choice (a base
    model serving dialogue) go to ``notes`` when given, for a caller that says them only once it has started
    (a start that fails says one line), else to ``out``."""
    def note(text: str) -> None:
        if notes is not None:
            notes.append(text)
        elif out is not None:
            print(text, file=out)

    roles: dict = {}
    named = _named_roles(specs or [catalog.DEFAULT_MODEL])
    for role, (spec, name, explicit) in named.items():
        if "://" in name:
            from npcai.remote import spec as remote_spec
            from npcai.remote.detect import connect  # needs httpx: the [remote] extra

            where = remote_spec.parse(role, name)
            roles[role] = remote_spec.Remote(where, connect(where, remote_key), remote_key)
            continue
        entry = catalog.CATALOG.get(name)
        base_dialogue = entry is not None and not entry.chat and role == "dialogue"
        if base_dialogue and explicit:
            raise NpcaiError(f"bad --model {spec!r}: {name} is a base model, not tuned for chat, and its lines "
                             f"fall apart; serve dialogue with {catalog.DEFAULT_MODEL} and use {name} as "
                             f"decision={name}")
        roles[role] = catalog.resolve(name, out=out)
        if base_dialogue:  # after resolving: a model that is not there is the one line
            note(f"note: {name} is a base model, not tuned for chat: its dialogue is for benchmarks, not "
                 f"players (serve dialogue with {catalog.DEFAULT_MODEL}, decision={name})")
    entry = catalog.CATALOG.get(next(iter(named.values()))[1])
    if "dialogue" not in roles and entry is not None and not entry.chat:
        # no model named for dialogue: the first role's serves it (Admission), a base model's lines fall apart
        note(f"note: {entry.name} is a base model, not tuned for chat, and with no --model dialogue=... it serves "
             f"dialogue too (serve dialogue with {catalog.DEFAULT_MODEL})")
    return roles


def _named_roles(specs: list[str]) -> dict[str, tuple[str, str, bool]]:
    """--model specs as role -> (spec, model name, whether the spec named the role), checked before any model
    is looked for: one model per role (a later spec would silently replace an earlier one), and a name."""
    named: dict[str, tuple[str, str, bool]] = {}
    for spec in specs:
        role, sep, name = spec.partition("=")
        explicit = bool(sep) and not ("/" in role or "\\" in role or role.endswith(".gguf"))
        if not explicit:
            role, name = ("dialogue" if "dialogue" not in named else "decision"), spec
        if not role.isidentifier():
            raise NpcaiError(f"bad --model {spec!r}: the role must be a plain name like dialogue or decision")
        if not name.strip():
            raise NpcaiError(f"bad --model {spec!r}: the model name is empty")
        if role in named:
            how = "" if explicit else " (a NAME without ROLE= serves dialogue, then decision)"
            raise NpcaiError(f"bad --model {spec!r}: role {role} is given twice, first by --model "
                             f"{named[role][0]!r}{how}; give each role one model")
        named[role] = (spec, name, explicit)
    return named


_STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")  # SIGHUP: the terminal it ran in closed (none on Windows)


def _on_stop_signals(handler) -> None:
    for name in _STOP_SIGNALS:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), handler)


def _note_stop_signals() -> list[int]:
    """Until the server can stop cleanly, a stop signal is only noted (loading a model cannot be interrupted):
    killed by the default action, or by KeyboardInterrupt, a sidecar the game quits while it starts would exit
    -15, -1 or 130, which a launcher reports as a crash. Returns the list the signals are noted in."""
    noted: list[int] = []
    _on_stop_signals(lambda signum, _frame: noted.append(signum))
    return noted


def cmd_serve(args: argparse.Namespace) -> int:
    from npcai.protocol import READY_PREFIX
    from npcai.sidecar.engine import Engine
    from npcai.sidecar.server import Server

    _fill_closed_std_streams()
    stopped_early = _note_stop_signals()
    settings = settings_from(args)
    settings.validate()
    if _parent_gone(settings):  # the game died while launching us: load nothing, say nothing is ready
        print(f"npcai: parent process {settings.parent_pid} is gone; not starting", file=sys.stderr, flush=True)
        return 0
    settings.token = settings.token or os.environ.get(TOKEN_ENV, "")  # the environment: not in the process list
    if settings.connection_file and not settings.token:
        settings.token = secrets.token_urlsafe(32)  # like a Jupyter kernel's key: only the file's reader has it
    logging.basicConfig(level=logging.INFO if settings.verbose else logging.WARNING,
                        format="npcai: %(message)s", stream=sys.stderr)
    polite = be_polite(settings.nice, settings.cpu_ids())  # before any compute thread exists
    notes: list[str] = []  # said once the sidecar has started: a start that fails says one line
    roles = model_roles(settings.model, out=sys.stderr, remote_key=_remote_key(settings), notes=notes)
    server = Server(settings, lambda emit: Engine(settings, roles, emit), polite)
    endpoint = server.bind()
    _on_stop_signals(lambda *_: server.stop())
    written: list[Path] = []
    try:
        if _parent_gone(settings):  # it died while the models loaded: no READY, no files, a clean exit
            server.stop(f"parent process {settings.parent_pid} is gone")
        elif stopped_early:  # the game quit while we loaded: the same
            server.stop(f"{signal.Signals(stopped_early[0]).name} while starting")
        else:
            if settings.ready_file:
                written.append(_write_atomically(Path(settings.ready_file), endpoint + "\n"))
            if settings.connection_file:
                info = {"endpoint": endpoint, "token": settings.token, "pid": os.getpid()}
                if server.curve_public_key:
                    info["curve_server_key"] = server.curve_public_key
                written.append(_write_atomically(Path(settings.connection_file), json.dumps(info) + "\n", mode=0o600))
            for line in notes:
                print(line, file=sys.stderr, flush=True)
            print(f"{READY_PREFIX}{endpoint}", flush=True)
        code = server.serve_forever()
    finally:
        for path in written:  # a file left behind means the sidecar did not exit cleanly
            path.unlink(missing_ok=True)
    # Sockets, files and models are closed above; skip the interpreter's module teardown (about
    # a second with numba and llama.cpp loaded), which a game waiting on our exit would feel.
    with contextlib.suppress(OSError):  # a reader gone from our pipes changes nothing about how we ended
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _fill_closed_std_streams() -> None:
    """A launcher that reads --ready-file may start the sidecar without stdin, stdout or stderr (a Windows GUI
    game's console child has none): Python's stream is then None, and writes to it go to the null device.
    A number still free is held by the null device too, so that no socket or file takes it and receives a
    library's writes; one taken already (a bundle's bootloader opens its archive early) is left alone."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "r" if fd == 0 else "w"))  # noqa: SIM115 (for the process)


def _parent_gone(settings: Settings) -> bool:
    from npcai.sidecar import parent

    return bool(settings.parent_pid) and not parent.alive(settings.parent_pid)


def _remote_key(settings: Settings) -> str:
    """The remote engines' API key: from --remote-key-file, else $NPCAI_REMOTE_KEY (never a flag's value,
    which any user of the machine can read in the process list)."""
    if settings.remote_key_file:
        try:
            return Path(settings.remote_key_file).read_text().strip()
        except OSError as exc:
            raise NpcaiError(f"bad --remote-key-file {settings.remote_key_file!r}: {exc.strerror}") from None
    return os.environ.get("NPCAI_REMOTE_KEY", "").strip()


def _write_atomically(path: Path, text: str, mode: int = 0o644) -> Path:
    """Write through a temporary file renamed into place; ``mode`` holds from the file's creation on."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, mode)  # exactly this mode, whatever the umask
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise NpcaiError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def _one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """A bad flag ends in one line and exit code 2, like every other start failure."""
    def error(message: str):
        parser.exit(2, f"npcai: {message} (see {parser.prog} --help)\n")

    parser.error = error  # type: ignore[method-assign]
    parser.set_defaults(parser=parser)  # the innermost (sub)command's, to report the arguments it left over
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; arguments no (sub)command took are reported by the command they came with, whose
    --help says what it takes (argparse reports them from the top parser)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        args.parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def cmd_models(args: argparse.Namespace) -> int:
    if args.action == "list":
        from npcai.model.merged import merged_path

        for name, m in catalog.CATALOG.items():
            mark = "pulled" if catalog.is_pulled(name) else "-"
            default = " (default)" if name == catalog.DEFAULT_MODEL else ""
            print(f"{name:<22} {m.size / 1e6:6.0f} MB  {mark:<7} {m.description}{default}")
        print("adapters (--lora ROLE=NAME; merged: its model's weights with it merged in are in the cache):")
        for name, a in catalog.ADAPTERS.items():
            _, path, _ = catalog.resolve_adapter(name)
            merged = catalog.is_pulled(a.base) and merged_path(catalog.run_path(a.base), path,
                                                                catalog.cache_dir()).is_file()
            print(f"{name:<22} {path.stat().st_size / 1e6:6.0f} MB  {'merged' if merged else '-':<7} "
                  f"for {a.base}: {a.description}")
        return 0
    if args.action == "pull":
        catalog.pull(args.name)
    else:
        print(catalog.resolve(args.name, pull_missing=False))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from npcai.demo import run_demo

    return run_demo(args.model or [], scenario=args.scenario, color=not args.no_color, loras=args.lora or [])


def cmd_chat(args: argparse.Namespace) -> int:
    from npcai.demo import run_chat

    roles = model_roles(args.model or [], remote_key=os.environ.get("NPCAI_REMOTE_KEY", "").strip())
    served = roles.get("dialogue") or next(iter(roles.values()))
    dialogue = catalog.entry_for(served) if isinstance(served, Path) else None  # a remote model is the engine's
    if dialogue is not None and not dialogue.chat:
        raise NpcaiError(f"{dialogue.name} is a base model, not tuned for chat: talk to {catalog.DEFAULT_MODEL}")
    return run_chat(args.npc, args.model or [], scenario=args.scenario, persona=args.persona)


def cmd_bench(args: argparse.Namespace) -> int:
    from npcai.bench.runner import run_bench

    return run_bench(args)


def build_parser() -> argparse.ArgumentParser:
    from npcai.bench.runner import DEFAULT_MODELS as bench_models
    from npcai.bench.runner import ITEMS as bench_items

    parser = argparse.ArgumentParser(prog="npcai", description="Local AI for game characters: a low-latency sidecar.")
    _one_line_errors(parser)  # unknown flags of any command are reported here
    sub = parser.add_subparsers(dest="command", required=True)

    p = _one_line_errors(sub.add_parser("serve", help="run the sidecar (prints 'NPCAI READY <endpoint>' when ready)"))
    _add_settings(p)
    p.set_defaults(func=cmd_serve)

    p = _one_line_errors(sub.add_parser("models", help="list, pull or locate models"))
    actions = p.add_subparsers(dest="action", metavar="{list,pull,path}", required=True)
    p = _one_line_errors(actions.add_parser("list", help="the catalog's models and adapters, and which are pulled"))
    p.set_defaults(func=cmd_models)
    for action, help_text in (("pull", "download a catalog model"), ("path", "print a pulled model's GGUF file")):
        p = _one_line_errors(actions.add_parser(action, help=help_text))
        p.add_argument("name", help="a catalog name (npcai models list)")
        p.set_defaults(func=cmd_models)

    for name, func, help_text in (("demo", cmd_demo, "play a short scripted village scene"),
                                  ("chat", cmd_chat, "talk to one NPC in the terminal")):
        p = _one_line_errors(sub.add_parser(name, help=help_text))
        if name == "chat":
            p.add_argument("npc", help="an NPC of the scenario (brom, mira, grik, captain) or a new name")
            p.add_argument("--persona", help="persona text for a new NPC")
        p.add_argument("--model", action="append", metavar="SPEC", help="NAME or ROLE=NAME (repeatable)")
        p.add_argument("--scenario", help="scenario JSON file (default: the built-in village)")
        if name == "demo":
            p.add_argument("--no-color", action="store_true", help="plain output")
            p.add_argument("--lora", action="append", metavar="ROLE=NAME|PATH",
                           help="score a role's choices through this LoRA adapter, as `npcai serve --lora` (repeatable)")
        p.set_defaults(func=func)

    p = _one_line_errors(sub.add_parser("bench", help="run the latency benchmarks and write a JSON report"))
    p.add_argument("--model", action="append", metavar="NAME", help=f"models to bench (repeatable; default: {' and '.join(bench_models)}, one after the other)")
    p.add_argument("--only", action="append", choices=bench_items, metavar="ITEM",
                   help=f"run only this item (repeatable); items: {', '.join(bench_items)}")
    p.add_argument("--out", default="bench-report.json", help="where to write the JSON report")
    p.add_argument("--quick", action="store_true", help="fewer repetitions (for smoke runs)")
    p.add_argument("--plots", action="store_true", help="draw PNG latency plots (needs the [bench] extra)")
    p.add_argument("--data", metavar="DIR", help="the quality item's public data: a folder holding quality/ and "
                                                "schemas/ (default: $NPCAI_DATA, else shared/data beside the checkout)")
    p.add_argument("--quality-items", type=_item_count, default=0, metavar="N|all",
                   help="items drawn from each public multiple-choice set, or all of them (default 500; 100 "
                        "with --quick)")
    p.add_argument("--threads", type=int, default=0,
                   help="compute threads for the sidecar and every baseline (default: all cores)")
    p.add_argument("--lora", action="append", metavar="ROLE=NAME|PATH",
                   help="also bench each model with this LoRA adapter (the sidecar's --lora), right after it "
                        "runs without; the quality item then compares their picks item by item (repeatable)")
    p.set_defaults(func=cmd_bench)

    p = _one_line_errors(sub.add_parser("bundle", help="build a self-contained sidecar folder to ship with a game"))
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to create (npcai-sidecar inside)")
    p.add_argument("--model", action="append", metavar="SPEC",
                   help=f"NAME|PATH or ROLE=NAME|PATH to ship (repeatable; default: {catalog.DEFAULT_MODEL})")
    p.add_argument("--force", action="store_true", help="replace DIR if it already holds a bundle")
    p.add_argument("--scoring-weights", action="store_true",
                   help="also ship each catalog model's BF16 copy, which choice and action decisions are scored on "
                        "where the player's CPU has BF16 kernels (about 0.6x as long; 258 MiB more for SmolLM2; "
                        "made only where this machine's llama.cpp has them)")
    p.set_defaults(func=cmd_bundle)
    return parser


def _item_count(text: str) -> int:
    """``--quality-items``: a positive count, or ``all`` (-1: every item, as ``quality.sample`` takes it)."""
    if text == "all":
        return -1
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'all', got {text!r}")
    return int(text)


def cmd_bundle(args: argparse.Namespace) -> int:
    from npcai.bundle.builder import build_bundle

    build_bundle(Path(args.out), args.model or [], force=args.force, scoring_weights=args.scoring_weights)
    return 0


def serve_main(argv: list[str], prog: str = "npcai serve") -> int:
    """`npcai serve` alone, without the other commands and what they import (the bundled sidecar's entry)."""
    p = _one_line_errors(argparse.ArgumentParser(prog=prog, description="run the npcai sidecar"))
    _add_settings(p)
    p.set_defaults(func=cmd_serve)
    return _run(_parse(p, argv))


def main(argv: list[str] | None = None) -> int:
    return _run(_parse(build_parser(), argv))


def _run(args: argparse.Namespace) -> int:
    try:
        return args.func(args) or 0
    except NpcaiError as err:
        print(f"npcai: {err.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `npcai models list | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit would fail too
        return 0


if __name__ == "__main__":
    sys.exit(main())
