"""``python -m sandbox``: serve every simulator on loopback (also ``vector-sync sandbox``).

With ``--print-env``, stdout is the settings vector-sync needs (``NAME=value``, one a line,
sorted) followed by ``# ready`` once every server listens; ``vector-sync up`` relies on that.
See docs/sandbox.md.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading

from sandbox.server import SIMULATORS, SandboxServer, create_simulators


def main(argv: list[str] | None = None, prog: str = "python -m sandbox") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port-base", type=int, default=8200,
                        help="simulator i listens on port-base + i (0: any free ports)")
    parser.add_argument("--profile", default="small", choices=["empty", "small", "scale"],
                        help="seeded data set ('scale' is the seed-scale profile)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", default=",".join(SIMULATORS),
                        help="comma-separated simulators to run")
    parser.add_argument("--webhook-url", default=None,
                        help="receiver base URL; webhooks go to {url}/webhooks/{source}")
    parser.add_argument("--print-env", action="store_true",
                        help="print NAME=value settings for vector-sync, one a line, then serve")
    parser.add_argument("--trickle", type=float, default=0.0,
                        help="every N seconds each simulator makes one live edit (0: off)")
    args = parser.parse_args(argv)
    if args.trickle < 0:
        parser.error("--trickle must be 0 (off) or a number of seconds")
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SIMULATORS))
    if unknown:
        parser.error(f"unknown simulators: {', '.join(unknown)}")
    sims = create_simulators(names, profile=args.profile, seed=args.seed)
    server = SandboxServer(sims, host=args.host, port_base=args.port_base,
                           webhook_url=args.webhook_url)
    if args.port_base:
        busy = [f"{name} ({port})" for name, port in server.ports.items() if not _free(args.host, port)]
        if busy:
            print(f"sandbox: port(s) in use: {', '.join(busy)}; choose another --port-base "
                  "(SANDBOX_PORT_BASE for vector-sync up)", file=sys.stderr)
            return 1
    if args.print_env:
        for name, value in sorted(server.env().items()):
            print(f"{name}={value}")
        sys.stdout.flush()
    else:
        for name in sims:
            print(f"sandbox: {name} on {server.url(name)}", file=sys.stderr)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()
    if args.trickle:
        server.start_trickle(args.trickle)
    print("# ready", flush=True)
    stop.wait()
    server.stop()
    return 0


def _free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


if __name__ == "__main__":
    sys.exit(main())
