"""`disrouter`: run an embedded NATS server, ask the mesh, list live nodes, run the demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

from rich.console import Console
from rich.table import Table

from disrouter.local.demo import run_demo
from disrouter.local.nats_server import NatsServerError, ensure_port_free, server_command
from disrouter.local.processes import NodeStartError
from disrouter.gateway.settings import GatewaySettings
from disrouter.mesh.client import MeshClient, MeshError
from disrouter.mesh.connection import MeshConnectionError, connect
from disrouter.mesh.logs import configure_logging
from disrouter.mesh.membership import list_cards, open_registry
from disrouter.mesh.objective import SCENARIOS, ScenarioError, parse_scenario
from disrouter.mesh.protocol import Answer
from disrouter.mesh.subjects import DEFAULT_PREFIX, Subjects
from disrouter.mesh.topology import TopologyError

from .retrying import retrying
from .common import OneLineParser, add_dataclass_options, add_log_options, add_nats_options, dataclass_from_args, nats_auth, run_command
from .watch import watch

PROG = "disrouter"


def _scenario(value: str) -> str | float:
    try:
        return parse_scenario(value)
    except ScenarioError as exc:
        raise argparse.ArgumentTypeError(f"--{exc}") from None


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not number > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value!r}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="DiSRouter: distributed self-routing of LLM queries over NATS.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)

    nats = commands.add_parser("nats", help="run an embedded nats-server (JetStream on) in the foreground")
    nats.add_argument("--port", type=int, default=4222)
    nats.add_argument("--host", default="127.0.0.1")
    nats.add_argument("--store-dir", default=None, help="JetStream storage folder (default: a temporary folder)")

    status = commands.add_parser("status", help="list live nodes (--watch: a live view)")
    add_nats_options(status)
    status.add_argument("--prefix", default=DEFAULT_PREFIX)
    status.add_argument("--json", action="store_true", help="print a JSON list of node cards")
    status.add_argument("--timeout", type=_positive, default=15.0, metavar="S", help="seconds to keep trying through a NATS restart or leader election (default 15)")
    status.add_argument("--watch", action="store_true", help="a refreshing view: load, counts and latency by tier, joins and leaves")
    status.add_argument("--interval", type=_positive, default=1.0, metavar="S", help="seconds between refreshes with --watch (default 1)")
    status.add_argument("--iterations", type=int, default=None, metavar="N", help="stop after N refreshes with --watch (default: until Ctrl-C)")

    ask = commands.add_parser("ask", help="ask the mesh a question")
    ask.add_argument("question")
    add_nats_options(ask)
    ask.add_argument("--prefix", default=DEFAULT_PREFIX)
    ask.add_argument("--scenario", type=_scenario, default="balance", help=f"{' | '.join(SCENARIOS)}, or an alpha in [0, 1]")
    ask.add_argument("--timeout", type=_positive, default=60.0, help="seconds to wait for the answer, connecting included")
    ask.add_argument("--connect-timeout", type=_positive, default=10.0, metavar="S", help="seconds to keep trying to reach NATS, e.g. through a restart (default 10)")
    ask.add_argument("--max-tokens", type=int, default=128)
    ask.add_argument("--json", action="store_true", help="print the whole Answer as one JSON object")
    ask.add_argument("--stream", action="store_true", help="print the answer as it is generated")

    demo = commands.add_parser("demo", help="start NATS and the demo topology's nodes, ask a few questions")
    demo.add_argument("--keep", action="store_true", help="keep the mesh running until Ctrl-C / SIGTERM")
    demo.add_argument("--port", type=int, default=None, help="NATS port (default: a free port)")
    demo.add_argument("--topology", default=None, help="topology file (default: the packaged demo.yaml)")
    add_log_options(demo, default_format="console")

    gateway = commands.add_parser("gateway", help="serve an OpenAI-compatible HTTP API in front of the mesh (needs the gateway extra)")
    add_nats_options(gateway)
    add_dataclass_options(gateway, GatewaySettings)
    add_log_options(gateway)

    bench = commands.add_parser("bench", help="measure the mesh and the backends")
    benchmarks = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK", parser_class=OneLineParser)
    perf = benchmarks.add_parser("perf", help="hop overhead, throughput, batching, reject cost, memory (a few minutes)")
    perf.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    perf.add_argument("--quick", action="store_true", help="small counts and no vLLM: checks the benchmark runs, not the figures")
    perf.add_argument("--vllm-compiled", action="store_true", help="measure vLLM with graph compilation (slower start, faster decoding)")
    perf.add_argument("--readme", metavar="FILE", help="also regenerate the performance table in FILE (the README) from the figures")
    add_log_options(perf, default_format="console")
    quality = benchmarks.add_parser("quality", help="routing quality through the live mesh against oracle and centralized routers")
    quality.add_argument("--preset", default="smoke", help="smoke (minutes, CI), full, or a preset YAML file (default smoke)")
    quality.add_argument("--out", default=None, help="results folder (default: ./bench-quality-<preset>)")
    quality.add_argument("--readme", metavar="FILE", help="also regenerate the routing-quality block (headline and table) in FILE (the README)")
    quality.add_argument("--report-only", action="store_true", help="run nothing: recompute the headline and rewrite results.json, results.md (and --readme) from the results in --out")
    add_log_options(quality, default_format="console")
    chaos = benchmarks.add_parser("chaos", help="soak: node and NATS server kills, pauses, drains under open-loop load")
    chaos.add_argument("--minutes", type=_positive, default=10.0, help="length of the load (default 10; CI runs 2)")
    chaos.add_argument("--out", default=None, help="results folder (default: ./bench-chaos)")
    chaos.add_argument("--seed", type=int, default=13, help="seed of the fault schedule and the load mix")
    chaos.add_argument("--rate", type=_positive, default=4.0, help="queries a second, all clients together (default 4)")
    chaos.add_argument("--partition", choices=("auto", "on", "off"), default="auto",
                       help="cut a NATS server off with network namespaces: auto (where root and `ip` allow it), on (fail if not), off")
    add_log_options(chaos, default_format="console")

    train = commands.add_parser("train", help="teach a model when to say \"I don't know!\" (needs the train extra)")
    train.add_argument("stage", choices=["probe", "sft", "rl", "eval", "all", "family", "mesh"], help="one stage, or all in order (each resumes); family: pretrain the model family; mesh: choose the tiers' probe thresholds by the mesh's utility")
    train.add_argument("--config", required=True, help="run config YAML, e.g. training/configs/smoke.yaml")
    train.add_argument("--out", default=None, help="output folder (default: the config's out)")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_log_options(train, default_format="console")
    return parser


def run_nats(args: argparse.Namespace) -> int:
    ensure_port_free(args.host, args.port)
    store_dir = args.store_dir or os.path.join(os.path.expanduser("~/.cache/disrouter"), f"nats-{args.port}")
    os.makedirs(store_dir, exist_ok=True)
    command = server_command(args.host, args.port, store_dir)
    print(f"{PROG}: nats-server on nats://{args.host}:{args.port} (JetStream in {store_dir}); Ctrl-C stops it", file=sys.stderr)
    os.execv(command[0], command)  # the server itself runs in the foreground and handles signals


async def run_status(args: argparse.Namespace) -> int:
    if args.watch and args.json:
        raise ValueError("--watch draws a table; leave out --json")
    if args.watch:
        nc = await connect(args.nats, name="disrouter-status", auth=nats_auth(args))
        try:
            await watch(nc, args.prefix, args.interval, args.iterations)
        finally:
            await nc.close()
        return 0

    async def read_cards() -> list:
        nc = await connect(args.nats, name="disrouter-status", auth=nats_auth(args))
        try:
            return await list_cards(await open_registry(nc, Subjects(args.prefix)))
        finally:
            await nc.close()

    cards = await retrying(read_cards, args.timeout)
    if args.json:
        print(json.dumps([card.model_dump(mode="json") for card in cards], indent=2))
        return 0
    table = Table(title=f"{len(cards)} live node(s) on {args.prefix}")
    for column in ("node", "model key", "model", "cost", "entry", "policy", "backend", "load"):
        table.add_column(column)
    for c in cards:
        table.add_row(c.node_id, c.model_key, c.model, f"{c.cost:g}", "yes" if c.entry else "", c.policy, c.backend, str(c.load))
    Console().print(table)
    return 0


async def run_ask(args: argparse.Namespace) -> int:
    end = time.monotonic() + args.timeout  # connecting and asking share the one timeout
    connecting = lambda: MeshClient.connect(args.nats, args.prefix, auth=nats_auth(args))  # noqa: E731
    client = await retrying(connecting, min(args.connect_timeout, args.timeout))
    options = {"scenario": args.scenario, "timeout": max(end - time.monotonic(), 0.1), "max_tokens": args.max_tokens, "retries": 3}
    async with client:
        if args.stream:
            async for event in client.stream(args.question, **options):
                if isinstance(event, Answer):
                    answer = event
                elif not args.json:
                    print(event.chunk, end="", flush=True)
            if not args.json:
                print()
        else:
            answer = await client.ask(args.question, **options)
    if args.json:
        print(answer.model_dump_json())
        return 0
    if not args.stream:
        print(answer.text)
    route = " -> ".join(f"{hop.model}({hop.decision})" for hop in answer.path)
    print(f"-- answered by {answer.node_id} via {route}", file=sys.stderr)
    return 0


EXPECTED_ERRORS = (MeshError, NodeStartError, MeshConnectionError, NatsServerError, TopologyError, ValueError, OSError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: _run(args, argv), EXPECTED_ERRORS)


def _run(args: argparse.Namespace, argv: list[str] | None) -> int:
    """Run the chosen subcommand; its exit status."""
    if args.command == "nats":
        return run_nats(args)
    if args.command in ("status", "ask"):
        configure_logging("console", "error")  # their failures are one line each; no warnings on stdout
        return asyncio.run(run_status(args) if args.command == "status" else run_ask(args))
    configure_logging(args.log_format, args.log_level)
    if args.command == "gateway":
        try:
            from disrouter.gateway.server import serve
        except ImportError as exc:
            raise ValueError(f"the gateway needs the gateway extra (pip install 'disrouter[gateway]'): {exc}") from None
        return asyncio.run(serve(dataclass_from_args(GatewaySettings, args), args.nats, nats_auth(args)))
    if args.command == "train":
        from disrouter.training.cli import main as run_train

        return run_train(args.stage, args.config, args.out, progress=not args.no_progress)
    if args.command == "bench" and args.benchmark == "quality":
        from disrouter.bench.quality.run import main as run_quality

        return run_quality(args.preset, args.out, readme_file=args.readme, report_only=args.report_only)
    if args.command == "bench" and args.benchmark == "chaos":
        from disrouter.bench.chaos.run import main as run_chaos

        command = " ".join(["disrouter", *(argv if argv is not None else sys.argv[1:])])
        return run_chaos(args.minutes, args.out, command, seed=args.seed, rate=args.rate, partition=args.partition)
    if args.command == "bench":
        from disrouter.bench.perf import main as run_perf

        command = " ".join(["disrouter", *(argv if argv is not None else sys.argv[1:])])
        return run_perf(args.json, quick=args.quick, vllm_compiled=args.vllm_compiled, readme=args.readme, command=command)
    return run_demo(port=args.port, keep=args.keep, topology=args.topology)


if __name__ == "__main__":
    raise SystemExit(main())
