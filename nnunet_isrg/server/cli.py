"""``isrg serve``: the browser viewer and HTTP API on a local port.

    isrg serve --model nnUNet_results/Dataset501_X/ISRGTrainer__nnUNetPlans__3d_fullres --data /data/ct
    # open http://127.0.0.1:8765/  (API docs: http://127.0.0.1:8765/docs)

Binds to 127.0.0.1 by default. Any other address (reachable by other machines) needs ``--token``
(or the environment variable ISRG_TOKEN); the page then takes it as ``/?token=...``.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import sys


def is_loopback(host: str) -> bool:
    """True for 'localhost' and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything, so it counts as exposed


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

    try:
        app = create_app(args.model, data_dirs=args.data, token=args.token, max_upload_mb=args.max_upload_mb,
                         session_ttl_s=args.session_ttl, folds=_parse_folds(args.folds), device=args.device,
                         checkpoint=args.checkpoint, max_sessions=args.max_sessions, torch_threads=args.threads)
    except (ModelFolderError, FileNotFoundError) as e:
        print(f"isrg serve: {e}", file=sys.stderr)
        return 2
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    url = f"http://{shown}:{args.port}/" + (f"?token={args.token}" if args.token else "")
    print(f"isrg serve: viewer at {url}  (API docs: http://{shown}:{args.port}/docs)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="isrg serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_serve_arguments(parser)
    return run_serve_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
