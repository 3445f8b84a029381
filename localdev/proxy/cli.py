"""Command line: `python -m localdev.proxy`, the proxy as a process of its own."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import threading

from .classify import arm_kind, storage_kind
from .core import Proxy
from .rules import FaultConfig


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m localdev.proxy",
        description="Counting/delaying/fault-injecting reverse proxy. Prints its URL (and with "
        "--tls the CA path) on stdout, then serves until SIGINT/SIGTERM. Steer it via "
        "GET /_proxy/counts, POST /_proxy/reset, POST /_proxy/config, POST /_proxy/trigger.",
    )
    p.add_argument("--upstream", default="http://127.0.0.1:10000")
    p.add_argument("--port", type=int, default=0, help="listen port (0: pick a free one)")
    p.add_argument("--host", default="127.0.0.1", help="listen address")
    p.add_argument("--tls", action="store_true", help="serve https with a throwaway CA")
    p.add_argument("--upstream-ca", help="CA bundle to verify an https upstream")
    p.add_argument("--classify", choices=("storage", "arm"), default="storage")
    p.add_argument("--rewrite-host", action="store_true", help="send the upstream's Host")
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fault-rate", type=float, default=0.0, help="total, spread over all types")
    p.add_argument("--fault-500", type=float)
    p.add_argument("--fault-503", type=float)
    p.add_argument("--fault-429", type=float)
    p.add_argument("--drop-before", type=float, help="drop the connection before forwarding")
    p.add_argument("--drop-after", type=float, help="drop the response after forwarding")
    p.add_argument("--retry-after", type=float, default=1.0, help="Retry-After seconds on 429")
    p.add_argument("--fault-kinds", help="comma-separated kinds the faults apply to")
    p.add_argument("--flavor", choices=("storage", "arm"))
    p.add_argument("--log-level", default="WARNING")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    faults = FaultConfig.spread(args.fault_rate)
    overrides = {
        "rate_500": args.fault_500,
        "rate_503": args.fault_503,
        "rate_429": args.fault_429,
        "rate_drop_before": args.drop_before,
        "rate_drop_after": args.drop_after,
    }
    kinds = frozenset(k.strip() for k in args.fault_kinds.split(",")) if args.fault_kinds else None
    faults = dataclasses.replace(
        faults,
        **{k: v for k, v in overrides.items() if v is not None},
        retry_after_s=args.retry_after,
        kinds=kinds,
        flavor=args.flavor,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with Proxy(
        upstream=args.upstream,
        listen_port=args.port,
        tls=args.tls,
        upstream_ca=args.upstream_ca,
        delay_ms=args.delay_ms,
        faults=faults,
        seed=args.seed,
        classify=arm_kind if args.classify == "arm" else storage_kind,
        listen_host=args.host,
        preserve_host=not args.rewrite_host,
    ) as proxy:
        print(proxy.url, flush=True)
        if proxy.ca_path:
            print(proxy.ca_path, flush=True)
        while not stop.wait(3600):
            pass
    return 0
