"""TVM's RPC server, answering `hwnas.device_fingerprint` too (`python -m hwnas.latency._rpc_server`, what
`hwnas devices serve` runs): a board then reports its whole fingerprint, TVM version included.

TVM serves from a fresh worker process; `server_init_callback` runs `register` there (cloudpickle sends it
by reference, so the worker imports this module), and the sessions it forks inherit the function.
"""

from __future__ import annotations

import argparse
import json

import tvm


def register() -> None:
    from hwnas.latency._devices import local_fingerprint

    def device_fingerprint() -> str:
        return json.dumps(local_fingerprint(), default=str)

    tvm.register_global_func("hwnas.device_fingerprint", device_fingerprint, override=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=9090)
    p.add_argument("--port-end", type=int, default=9199)
    p.add_argument("--tracker", required=True, help="HOST:PORT")
    p.add_argument("--key", required=True)
    p.add_argument("--no-fork", action="store_true", help="spawn sessions (emulated boards hang on fork)")
    args = p.parse_args(argv)
    host, _, port = args.tracker.rpartition(":")
    server = tvm.rpc.Server(args.host, args.port, args.port_end, key=args.key, tracker_addr=(host, int(port)),
                            no_fork=args.no_fork, server_init_callback=register)
    server.proc.join()


if __name__ == "__main__":
    main()
