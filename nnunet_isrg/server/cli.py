"""``isrg serve``: the browser viewer and HTTP API on a local port.

    isrg serve --model nnUNet_results/Dataset501_X/ISRGTrainer__nnUNetPlans__3d_fullres --data /data/ct
    # open http://127.0.0.1:8765/  (API docs: http://127.0.0.1:8765/docs)

Binds to 127.0.0.1 by default. Any other address (reachable by other machines) needs ``--token``
(or the environment variable ISRG_TOKEN); the page then takes it as ``/#token=...`` (the part after
``#`` never leaves the browser, so the token is in no request line and no log).
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys

#: size suffixes --session-memory and --total-memory take (powers of 1024; a plain number is bytes)
_SIZE_UNITS = {"": 1, "b": 1, "k": 2**10, "kib": 2**10, "m": 2**20, "mib": 2**20, "g": 2**30, "gib": 2**30,
               "t": 2**40, "tib": 2**40}


def is_loopback(host: str) -> bool:
    """True for 'localhost' and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything, so it counts as exposed


def parse_size(text: str) -> int:
    """``"2GiB"``, ``"512M"``, ``"1.5g"``, ``"1073741824"`` -> bytes (units are powers of 1024)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*", text)
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _SIZE_UNITS or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size: give e.g. 2GiB, 512MiB or a number of bytes")
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "-m", required=True,
                        help="trained ISRG model folder (nnUNet_results/DatasetXXX/<Trainer>__<Plans>__3d_fullres)")
    parser.add_argument("--data", "-d", action="append", default=[], metavar="DIR",
                        help="folder whose images may be opened by path (repeatable); nothing outside it is read")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; any non-loopback address needs --token)")
    parser.add_argument("--port", "-p", type=int, default=8765, help="port (default 8765)")
    parser.add_argument("--token", default=os.environ.get("ISRG_TOKEN"),
                        help="token every API request must carry (default: $ISRG_TOKEN); required for a "
                             "non-loopback --host")
    parser.add_argument("-f", "--folds", nargs="+", default=["0"],
                        help="folds to use, averaged (default 0); 'all' for fold_all, 'available' for every fold")
    parser.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth", help="checkpoint file name")
    parser.add_argument("-device", "--device", default="cpu", help="torch device (cpu, cuda, mps)")
    parser.add_argument("--max-upload-mb", type=float, default=1024.0, help="upload size limit in MiB (default 1024)")
    parser.add_argument("--session-ttl", type=float, default=3600.0,
                        help="seconds after which an idle session is dropped (default 3600)")
    parser.add_argument("--max-sessions", type=int, default=64, help="most sessions open at once (default 64)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--session-memory", type=parse_size, default="2GiB",
                        help="memory budget of one session's image, estimated from its header before it is read "
                             "(16 B per voxel); a larger image gets 413 (default 2GiB)")
    parser.add_argument("--total-memory", type=parse_size, default="6GiB",
                        help="memory budget of all sessions' images together; an image that does not fit gets 503 "
                             "(default 6GiB)")
    parser.add_argument("--embedding-cache", type=parse_size, default="128MiB",
                        help="most memory each session's cached image embeddings may hold, charged to the session's "
                             "budget besides its image (default 128MiB)")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="a further name clients reach the server by (Host header; repeatable; '*' for any). "
                             "Always accepted: the --host address, localhost, 127.0.0.1, [::1]")
    parser.add_argument("--header-timeout", type=float, default=10.0,
                        help="seconds a client has to send a request's headers before the connection is closed "
                             "(default 10)")


def run_serve_from_args(args: argparse.Namespace) -> int:
    if not is_loopback(args.host) and not args.token:
        print(f"isrg serve: refusing to bind to {args.host} without a token: that address may be reachable from "
              f"other machines. Give --token T (or set ISRG_TOKEN), or bind to 127.0.0.1.", file=sys.stderr)
        return 2
    for d in args.data:
        if not os.path.isdir(d):
            print(f"isrg serve: --data {d}: no such folder", file=sys.stderr)
            return 2
    # imported here: they load torch and the web stack, which the refusals above answer without
    import uvicorn

    from nnunet_isrg.inference.model_loading import ModelFolderError
    from nnunet_isrg.inference.predict_cli import _parse_folds
    from nnunet_isrg.server.app import create_app
    from nnunet_isrg.server.running import uvicorn_config

    try:
        app = create_app(args.model, data_dirs=args.data, token=args.token, max_upload_mb=args.max_upload_mb,
                         session_ttl_s=args.session_ttl, folds=_parse_folds(args.folds), device=args.device,
                         checkpoint=args.checkpoint, max_sessions=args.max_sessions, torch_threads=args.threads,
                         session_memory_bytes=args.session_memory, total_memory_bytes=args.total_memory,
                         embedding_cache_bytes=args.embedding_cache,
                         host=args.host, allowed_hosts=args.allowed_host)
        config = uvicorn_config(app, args.host, args.port, "info", args.header_timeout)
    except (ModelFolderError, FileNotFoundError, ValueError) as e:
        print(f"isrg serve: {e}", file=sys.stderr)
        return 2
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    shown = f"[{shown}]" if ":" in shown else shown
    # the token is not printed: this line may end up in a log
    with_token = f" (with the token: http://{shown}:{args.port}/#token=<token>)" if args.token else ""
    print(f"isrg serve: viewer at http://{shown}:{args.port}/{with_token}  (API docs: http://{shown}:{args.port}"
          f"/docs)", flush=True)
    uvicorn.Server(config).run()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="isrg serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_serve_arguments(parser)
    return run_serve_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
