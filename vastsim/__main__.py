"""How does a chaos script or a developer run the simulator as its own process?

    python -m vastsim [--host 127.0.0.1] [--port 0] [--api-key K] [--speed F] [--offers N]
                      [--seed S] [--fault-mix none|default] [--ssh-host H --ssh-port P]
                      [--download-bytes-per-s B] [--provisioning-log-path FILE]

It prints one JSON line with its URLs once it listens, then serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys

from pydantic import SecretStr

from vastsim.config import SimConfig
from vastsim.simulator import Simulator


def _config(argv: list[str]) -> SimConfig:
    parser = argparse.ArgumentParser(
        prog="python -m vastsim", description="Serve the Vast.ai + ComfyUI simulator on loopback."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default=SimConfig().api_key.get_secret_value())
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--offers", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fault-mix", choices=["none", "default"], default="none")
    parser.add_argument("--ssh-host", help="SSH server every instance reports (ssh_host)")
    parser.add_argument("--ssh-port", type=int, help="its port (ssh_port)")
    parser.add_argument(
        "--download-bytes-per-s",
        type=float,
        default=SimConfig().download_bytes_per_s,
        help="hosts' bandwidth for the models of an environment manifest",
    )
    parser.add_argument(
        "--provisioning-log-path", help="file every instance appends its provisioning log to"
    )
    args = parser.parse_args(argv)
    return SimConfig(
        host=args.host,
        port=args.port,
        api_key=SecretStr(args.api_key),
        speed=args.speed,
        offers=args.offers,
        seed=args.seed,
        fault_mix=args.fault_mix,
        ssh_host=args.ssh_host,
        ssh_port=args.ssh_port,
        download_bytes_per_s=args.download_bytes_per_s,
        provisioning_log_path=args.provisioning_log_path,
    )


async def _serve(config: SimConfig) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    async with Simulator(config) as sim:
        urls = {
            "base_url": sim.base_url,
            "api_key": sim.api_key,
            "hf_base_url": sim.hf_base_url,
            "civitai_base_url": sim.civitai_base_url,
            "control_url": sim.control_url,
        }
        print(json.dumps(urls), flush=True)
        await stopping.wait()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(_serve(_config(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
