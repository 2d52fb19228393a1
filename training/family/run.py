"""`disrouter train family`: world -> splits -> tokenizer -> every tier -> evaluation -> report.

Output folder::

    data/        world.json, corpus.jsonl, sa.jsonl (+ sa-train/val/test.jsonl), ood.jsonl
    tokenizer/   tokenizer.json with the chat template
    tiers/NAME/  fp16 safetensors, config, tokenizer, tier.json (size, budget, measured time)
    report.md, report.json, accuracy.png, topology.yaml, SHA256SUMS, command.txt

A tier already saved is not trained again, so an interrupted run resumes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import structlog

from disrouter.node.prompts import DEMONSTRATIONS, REJECT_PHRASE, scenario_instruction

from ..progress import progress_bar
from ..tasks import Task, load_tasks, write_tasks
from .config import FamilyConfig
from .evaluate import accuracy_table, generate, majority_answers
from .model import TierSpec, flops_per_token, tier_costs
from .questions import QA, corpus_examples, ood_tasks, sa_tasks, sum_key
from .report import write_report
from .tokenizer import train_tokenizer
from .train import encode_examples, train_tier
from .world import build_world

log = structlog.get_logger("disrouter.training.family")

TIER_FILE = "tier.json"
LOG_EVERY = 50
PROMPT_WEIGHT = 200  # copies of the node's fixed prompt texts in the tokenizer's training text
EXPOSURE_BUCKETS = {"1-2": (1, 2), "3-7": (3, 7), "8-31": (8, 31), "32+": (32, 10**9)}


def make_data(config: FamilyConfig):  # noqa: ANN201
    """The world and its splits: (world, corpus, sa, ood); the same for the same config."""
    world = build_world(config.seed, **config.world)
    sa = sa_tasks(world, config.sa_additions, config.seed, config.fractions)  # type: ignore[arg-type]
    ood = ood_tasks(world, config.ood_per_family, config.seed, sa)
    held = {sum_key(t.question) for t in sa + ood if t.meta["family"] in ("add", "add_phrasing")}
    return world, corpus_examples(world, config.additions, config.seed, held), sa, ood


def write_data(config: FamilyConfig) -> tuple[list[QA], list[Task], list[Task]]:
    """Build the world and write every split; return (corpus, sa, ood)."""
    data = config.out / "data"
    data.mkdir(parents=True, exist_ok=True)
    world, corpus, sa, ood = make_data(config)
    (data / "world.json").write_text(json.dumps({"people": world.attributes, "cities": world.cities}, indent=1) + "\n")
    write_tasks((Task(id=f"corpus-{i:06d}", question=r.question, answer=r.answer, task="exact",
                      meta={"family": r.family, "relation": r.relation}) for i, r in enumerate(corpus)), data / "corpus.jsonl")
    write_tasks(sa, data / "sa.jsonl")
    for split in ("train", "val", "test"):
        write_tasks([t for t in sa if t.meta["split"] == split], data / f"sa-{split}.jsonl")
    write_tasks(ood, data / "ood.jsonl")
    return corpus, sa, ood


def build_tokenizer(config: FamilyConfig, corpus: list[QA]):  # noqa: ANN201
    folder = config.out / "tokenizer"
    if (folder / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder)
    prompts = [scenario_instruction(a) for a in (0.2, 0.5, 0.8)] + [f"{q} {a}" for q, a in DEMONSTRATIONS] + [REJECT_PHRASE]
    tokenizer = train_tokenizer([f"{r.question} {r.answer}" for r in corpus] + prompts * PROMPT_WEIGHT, config.vocab_size)
    tokenizer.save_pretrained(folder)
    return tokenizer


def train_all(config: FamilyConfig, corpus: list[QA], tokenizer, progress: bool) -> None:  # noqa: ANN001
    """Train every tier not yet saved: one after the other, or each in its own process (one
    thread each) when ``training.parallel``; one progress bar per tier either way."""
    todo = [spec for spec in config.tiers if not (config.out / "tiers" / spec.name / TIER_FILE).is_file()]
    if config.parallel and todo:
        _train_in_processes(config, todo, progress)
        return
    examples = encode_examples(tokenizer, corpus, config.system_share, config.seed)
    with progress_bar("family", progress) as bar:
        for spec in todo:
            task = bar.add_task(f"tier {spec.name}", total=spec.steps)
            train_one(config, spec, tokenizer, examples, _reporter(bar, task, spec), config.threads)


def train_one(config: FamilyConfig, spec: TierSpec, tokenizer, examples, on_step, threads: int) -> None:  # noqa: ANN001
    """Train tier ``spec`` from scratch and save it."""
    import torch
    import transformers
    from transformers import LlamaForCausalLM

    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    model = LlamaForCausalLM(spec.llama_config(len(tokenizer), config.max_positions, tokenizer.pad_token_id, tokenizer.eos_token_id))
    stats = train_tier(model, spec, examples, config.context, config.long_context, tokenizer.pad_token_id, config.seed, on_step=on_step)
    save_tier(model, tokenizer, spec, stats, config.out / "tiers" / spec.name, len(tokenizer))
    log.info("tier_trained", tier=spec.name, seconds=stats.seconds, tokens_per_second=round(stats.tokens_per_second))


def _progress_file(config: FamilyConfig, name: str) -> Path:
    return config.out / "tiers" / f".progress-{name}.json"


def _train_in_process(config_path: str, out: str, name: str) -> None:
    """Entry point of a tier's own process: rebuild the (deterministic) corpus and train one tier."""
    from transformers import AutoTokenizer

    config = FamilyConfig.load(config_path, out)
    spec = next(s for s in config.tiers if s.name == name)
    _, corpus, _, _ = make_data(config)
    tokenizer = AutoTokenizer.from_pretrained(config.out / "tokenizer")
    examples = encode_examples(tokenizer, corpus, config.system_share, config.seed)
    target = _progress_file(config, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def on_step(step: int, loss: float) -> None:
        if (step + 1) % 5 == 0 or step + 1 == spec.steps:
            target.write_text(json.dumps({"step": step + 1, "loss": loss}))
        if (step + 1) % LOG_EVERY == 0:
            log.info("tier_progress", tier=name, step=step + 1, steps=spec.steps, loss=round(loss, 4),
                     seconds=round(time.perf_counter() - started, 1))

    train_one(config, spec, tokenizer, examples, on_step, threads=1)


def _train_in_processes(config: FamilyConfig, todo: list[TierSpec], progress: bool) -> None:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    processes = {spec.name: context.Process(target=_train_in_process, args=(str(config.path), str(config.out), spec.name), name=f"tier-{spec.name}")
                 for spec in todo}
    for process in processes.values():
        process.start()
    with progress_bar("family", progress) as bar:
        tasks = {spec.name: bar.add_task(f"tier {spec.name}", total=spec.steps) for spec in todo}
        while any(p.is_alive() for p in processes.values()):
            time.sleep(2)
            for name, task in tasks.items():
                path = _progress_file(config, name)
                try:
                    state = json.loads(path.read_text())
                except (FileNotFoundError, json.JSONDecodeError):
                    continue
                bar.update(task, completed=state["step"], description=f"tier {name} loss {state['loss']:.3f}")
    failed = [name for name, p in processes.items() if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"training tiers {failed} failed; see the log above")


def _reporter(bar, task, spec: TierSpec):  # noqa: ANN001, ANN202
    """Advances the bar every step and logs the loss every ``LOG_EVERY`` steps (for logs without a terminal)."""
    started = time.perf_counter()

    def on_step(step: int, loss: float) -> None:
        bar.update(task, completed=step + 1, description=f"tier {spec.name} loss {loss:.3f}")
        if (step + 1) % LOG_EVERY == 0 or step + 1 == spec.steps:
            log.info("tier_progress", tier=spec.name, step=step + 1, steps=spec.steps, loss=round(loss, 4),
                     seconds=round(time.perf_counter() - started, 1))

    return on_step


def save_tier(model, tokenizer, spec: TierSpec, stats, folder: Path, vocab: int) -> None:  # noqa: ANN001
    """fp16 safetensors, config, generation config, tokenizer, and tier.json (written last)."""
    folder.mkdir(parents=True, exist_ok=True)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.half().save_pretrained(folder, safe_serialization=True)
    model.float()
    tokenizer.save_pretrained(folder)
    info = {"spec": asdict(spec), "params": sum(p.numel() for p in model.parameters()), "flops_per_token": flops_per_token(spec, vocab),
            "training": asdict(stats) | {"tokens_per_second": round(stats.tokens_per_second)}}
    (folder / TIER_FILE).write_text(json.dumps(info, indent=2) + "\n")


def evaluate_tier(config: FamilyConfig, folder: Path, splits: dict[str, list[Task]], progress: bool) -> dict[str, Any]:
    """Greedy and sampled answers of the saved tier on every split; accuracy tables and greedy correctness."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..graders import grade

    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(config.threads)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tables, correct = {}, {}
    total = sum(len(tasks) for tasks in splits.values()) * (1 + config.samples)
    with progress_bar(f"evaluate {folder.name}", progress) as bar:
        task = bar.add_task("", total=total)
        for split, tasks in splits.items():
            step = lambda n: bar.advance(task, n)  # noqa: E731
            greedy = generate(model, tokenizer, tasks, config.max_new_tokens, on_batch=step)
            sampled = [generate(model, tokenizer, tasks, config.max_new_tokens, config.temperature, seed=s + 1, on_batch=step)
                       for s in range(config.samples)]
            tables[split] = accuracy_table(tasks, greedy, sampled)
            correct[split] = {t.id: grade(t, out) for t, out in zip(tasks, greedy)}
            if split == "in_domain":
                tables["exposure"] = _by_exposure(tasks, greedy)
    return {"accuracy": {k: tables[k] for k in splits}, "fact_by_exposure": tables["exposure"], "correct": correct}


def _by_exposure(tasks: list[Task], outputs: list[str]) -> dict[str, dict[str, Any]]:
    from ..graders import grade

    result = {}
    for name, (low, high) in EXPOSURE_BUCKETS.items():
        hits = [grade(t, o) for t, o in zip(tasks, outputs) if t.meta.get("family") == "fact" and low <= t.meta["exposure"] <= high]
        result[name] = {"n": len(hits), "greedy": round(sum(hits) / len(hits), 4) if hits else None}
    return result


def _disagreement(tiers: dict[str, dict[str, Any]]) -> dict[str, float]:
    """In-domain, greedy: share of queries only some tiers get right, and how nested the tiers are."""
    names = list(tiers)
    rows = [tiers[n]["correct"]["in_domain"] for n in names]
    ids = list(rows[0])
    some = sum(1 for i in ids if 0 < sum(r[i] for r in rows) < len(rows)) / len(ids)
    smallest_right = [i for i in ids if rows[0][i]]
    largest_too = sum(rows[-1][i] for i in smallest_right) / len(smallest_right) if smallest_right else 0.0
    return {"tiers_disagree": round(some, 4), "smallest_right_largest_right_too": round(largest_too, 4)}


def topology_text(config: FamilyConfig, costs: dict[str, float]) -> str:
    lines = ["# The model family trained by `disrouter train family` (training/family/weights): cheapest to strongest.",
             "# Costs are proportional to compute per token, the strongest tier at 0.9 (see training/family/weights/report.md).",
             "mesh: family", "prefix: disrouter", "models:"]
    for index, spec in enumerate(config.tiers):
        policy = "always" if index == len(config.tiers) - 1 else "generate"
        lines += [f"  - key: family-{spec.name}", f"    model: family-{spec.name}", f"    cost: {costs[spec.name]}", f"    policy: {policy}"]
    return "\n".join(lines) + "\n"


def checksums(folder: Path) -> Path:
    """SHA256SUMS of every file under ``folder`` (but itself)."""
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(folder)}"
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "SHA256SUMS"]
    target = folder / "SHA256SUMS"
    target.write_text("\n".join(lines) + "\n")
    return target


def run_family(config: FamilyConfig, progress: bool = True) -> dict[str, Any]:
    """The whole family run; returns the report summary."""
    started = time.perf_counter()
    corpus, sa, _ = write_data(config)
    tokenizer = build_tokenizer(config, corpus)
    train_all(config, corpus, tokenizer, progress)
    splits = {"in_domain": load_tasks(config.out / "data" / "sa.jsonl"), "ood": load_tasks(config.out / "data" / "ood.jsonl")}
    costs = tier_costs(config.tiers, len(tokenizer))
    baseline = {split: accuracy_table(tasks, majority_answers(tasks), []) for split, tasks in splits.items()}
    tiers = {}
    for spec in config.tiers:
        folder = config.out / "tiers" / spec.name
        info = json.loads((folder / TIER_FILE).read_text())
        tiers[spec.name] = {"params": info["params"], "layers": spec.layers, "hidden": spec.hidden, "flops_per_token": info["flops_per_token"],
                            "cost": costs[spec.name], "training": info["training"], **evaluate_tier(config, folder, splits, progress)}
    summary = {"command": _command(config),
               "samples": config.samples, "temperature": config.temperature, "exposure_buckets": list(EXPOSURE_BUCKETS),
               "corpus_examples": len(corpus), "world": config.world, "seconds_total_this_run": round(time.perf_counter() - started, 1),
               "disagreement": _disagreement(tiers), "majority_baseline": baseline, "tiers": tiers}
    write_report(config.out, summary)
    (config.out / "topology.yaml").write_text(topology_text(config, costs))
    if config.commit_to is not None:
        commit(config, summary)
    return summary


def _command(config: FamilyConfig) -> str:
    """The command line that ran (without --no-progress), or the canonical one outside the CLI."""
    if sys.argv[1:3] == ["train", "family"]:
        return " ".join(["disrouter train family", *(arg for arg in sys.argv[3:] if arg != "--no-progress")])
    return f"disrouter train family --config {config.path}"


def commit(config: FamilyConfig, summary: dict[str, Any]) -> None:
    """Copy the tiers (weights, config, tokenizer), the report, the topology and the self-awareness and
    OOD task files into ``commit_to``, with checksums."""
    target = config.commit_to
    assert target is not None
    for spec in config.tiers:  # other files already there (notes) stay
        shutil.rmtree(target / spec.name, ignore_errors=True)
        shutil.copytree(config.out / "tiers" / spec.name, target / spec.name, ignore=shutil.ignore_patterns(".*"))
    for name in ("report.md", "report.json", "accuracy.png", "topology.yaml"):
        if (config.out / name).exists():
            shutil.copy2(config.out / name, target / name)
    for name in ("sa.jsonl", "sa-train.jsonl", "sa-val.jsonl", "sa-test.jsonl", "ood.jsonl", "world.json"):
        (target / "data").mkdir(exist_ok=True)
        shutil.copy2(config.out / "data" / name, target / "data" / name)
    shutil.copy2(config.path, target / "family.yaml")
    (target / "command.txt").write_text(summary["command"] + "\n")
    checksums(target)
