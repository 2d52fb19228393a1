"""`disrouter-node`: host one model on the mesh (one process per GPU)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import uuid

import structlog

from disrouter.cli.common import OneLineParser, add_dataclass_options, add_log_options, add_nats_options, dataclass_from_args, nats_auth, run_command
from disrouter.mesh import tracing
from disrouter.mesh.connection import MeshConnectionError, connect
from disrouter.mesh.logs import configure_logging
from disrouter.mesh.membership import NodeCard
from disrouter.mesh.subjects import DEFAULT_PREFIX, Subjects, subject_token
from disrouter.mesh.topology import TopologyError, load_topology

from . import __version__
from .backends import ModelNotFoundError, check_model, load_backend
from .calibration import CalibrationError, load_calibration
from .compose import build_node, check_answer_model, check_calibration
from .http import ProbeServer
from .policies import POLICIES
from .settings import BackendSettings, ConfigError, NodeSettings

PROG = "disrouter-node"
BACKEND_GROUPS = {"vllm": "vLLM engine (--backend vllm)", "openai": "OpenAI-compatible endpoint (--backend openai)"}
EXPECTED_ERRORS = (ConfigError, CalibrationError, TopologyError, ModelNotFoundError, MeshConnectionError, ValueError, OSError, tracing.TracingUnavailable)
log = structlog.get_logger("disrouter.node.cli")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description="Host one self-aware LLM on a DiSRouter mesh.")
    p.add_argument("--model", required=True, help="topology key, known model name (smollm2-135m), HF folder or .gguf file")
    routing = p.add_mutually_exclusive_group()
    routing.add_argument("--peers", help="explicit ordered fallback list of model keys, e.g. mid,large")
    routing.add_argument("--topology", help="topology YAML file (models ordered by cost)")
    add_nats_options(p)
    p.add_argument("--node-id", help="unique node id (default: <model key>-<random>)")
    p.add_argument("--key", help="model key for a model not in the topology file (default: from --model)")
    p.add_argument("--cost", type=float, help="normalised cost; required for a model not in the topology file")
    p.add_argument("--policy", choices=sorted(POLICIES), help="decision policy (default: topology's, else generate)")
    p.add_argument("--entry", action="store_true", help="serve the ingress subject (default: cheapest tier of the topology)")
    p.add_argument("--prefix", help=f"mesh subject prefix (default: topology's, else {DEFAULT_PREFIX})")
    p.add_argument("--calibration", help="probe / confidence policy thresholds (default: disrouter-calibration.json beside the model, else built-in)")
    add_dataclass_options(p, BackendSettings, BACKEND_GROUPS)
    add_dataclass_options(p, NodeSettings)
    add_log_options(p)
    return p


def node_card(args: argparse.Namespace) -> tuple[NodeCard, str, str]:
    """The node's card, the model to load, and the mesh prefix, from flags and topology."""
    topology = load_topology(args.topology) if args.topology else None
    found = topology.find(args.model) if topology else None
    if found:
        position, entry = found
        key, model, cost = entry.key, entry.model, entry.cost if args.cost is None else args.cost
        policy = args.policy or entry.policy or "generate"
        is_entry = args.entry or topology.is_entry(entry)
        answer_model = args.answer_model or entry.answer_model
    else:
        if args.cost is None:
            where = f"not in {args.topology}" if topology else "not in a topology file"
            raise ConfigError(f"model {args.model!r} is {where}: give its cost with --cost")
        position, model, cost = None, args.model, args.cost
        source = check_model(args.backend, args.model)
        key = args.key or subject_token(source.name if source else args.model)
        policy, is_entry, answer_model = args.policy or "generate", args.entry, args.answer_model
    prefix = args.prefix or (topology.prefix if topology else DEFAULT_PREFIX)
    card = NodeCard(
        node_id=args.node_id or f"{key}-{uuid.uuid4().hex[:6]}",
        model_key=key,
        model=model,
        cost=cost,
        position=position,
        entry=is_entry,
        policy=policy,
        answer_model=answer_model,
        backend=args.backend,
        version=__version__,
    )
    return card, model, prefix


async def serve(args: argparse.Namespace) -> int:
    card, model, prefix = node_card(args)
    subjects = Subjects(prefix)
    source = check_model(args.backend, model)  # fail on a missing model before connecting or loading
    check_answer_model(card)  # before loading two models
    answer_source = check_model(args.backend, card.answer_model) if card.answer_model else None
    model_folder = source.folder if source and source.gguf_file is None else None
    calibration = load_calibration(args.calibration, model_folder)
    check_calibration(card.policy, calibration)  # before connecting or loading
    options = dataclass_from_args(BackendSettings, args).loader_options()
    settings = dataclass_from_args(NodeSettings, args)
    if settings.tracing:
        tracing.enable(service_name="disrouter-node", instance=card.node_id)
    probes = await ProbeServer().start(settings.http_host, settings.http_port) if settings.http_port is not None else None
    nc = await connect(args.nats, name=f"disrouter-node {card.node_id}", auth=nats_auth(args))
    try:
        backend = await asyncio.to_thread(load_backend, args.backend, source or model, **options)
        answer_backend = (await asyncio.to_thread(load_backend, args.backend, answer_source or card.answer_model, **options)
                          if card.answer_model else None)
        peers = args.peers.split(",") if args.peers else None
        node = await build_node(nc, card, backend, subjects, peers=peers, calibration=calibration, settings=settings,
                                answer_backend=answer_backend)
        node.probes = probes  # /healthz answered while the model loaded; /readyz turns ready once registered
        log.info("nats_connected", server=nc.server, node_id=card.node_id)  # after loading: errors stay one line
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await node.start()
        await stop.wait()
        await node.stop()
    finally:
        await nc.drain() if nc.is_connected else await nc.close()
        if probes is not None:
            await probes.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_format, args.log_level)
    return run_command(PROG, lambda: asyncio.run(serve(args)), EXPECTED_ERRORS)


if __name__ == "__main__":
    raise SystemExit(main())
