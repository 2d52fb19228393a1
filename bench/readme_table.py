"""The README's performance table, generated from `disrouter bench perf`'s JSON (never typed in).

``python -m disrouter.bench.readme_table bench/results/perf.json README.md`` rewrites the table
between the two marker lines; ``disrouter bench perf --json FILE --readme README.md`` does it
after a run. A test checks that the README and the committed JSON agree. ``between`` and
``replace_between`` serve every generated README block (bench/quality/readme.py's too).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

BEGIN = "<!-- perf-table:begin (generated from bench/results/perf.json by bench/readme_table.py; do not edit) -->"
END = "<!-- perf-table:end -->"


def _n(value: float | int | None, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _target(results: dict[str, Any], key: str) -> str:
    target = results["targets"].get(key)
    if target is None:
        return "reported"
    verdict = {True: "met", False: "**missed**", None: "not measured"}[target["met"]]
    op, value = target["target"].split()
    return f"{ {'<=': '≤', '>=': '≥'}.get(op, op)} {_n(int(float(value)) if float(value).is_integer() else float(value))}: {verdict}"


def rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, value, target, what it is) for each line of the table."""
    hops, c = r["config"]["hops"], r["config"]
    legs = r["leg_payload_bytes"]
    conc = c["batch_concurrency"]
    tokens = r["batch_completion_tokens"]
    return [
        ("`hop_overhead_ratio`", f"**{_n(r['hop_overhead_ratio'], 2)}**", _target(r, "hop_overhead_ratio"),
         f"p50 of a query through a {hops}-hop cascade of `instant` nodes (two reject, the third answers; {_n(r['mesh_latency_ms_p50'], 3)} ms) "
         f"÷ p50 through a raw nats-py relay chain of {hops} processes on the same subjects with the same payload sizes "
         f"({' / '.join(map(str, legs[:-1]))} bytes, final reply {legs[-1]} bytes; {_n(r['relay_chain_ms_p50'], 3)} ms)"),
        ("`hop_overhead_ratio_vs_round_trips`", _n(r["hop_overhead_ratio_vs_round_trips"], 2), "reported",
         f"the same cascade ÷ p50 of {hops} sequential request/replies to one echo process ({_n(r['round_trips_ms_p50'], 3)} ms): "
         "the baseline published before, which passes through the server twice per leg"),
        ("`hop_overhead_ms_p50` / `_p99`", f"{_n(r['hop_overhead_ms_p50'], 3)} / {_n(r['hop_overhead_ms_p99'], 3)} ms", "",
         f"(cascade − relay chain) ÷ {hops}: what a hop costs beyond a raw NATS relay of the same messages"),
        ("`throughput_ratio`", f"**{_n(r['throughput_ratio'], 2)}**", "reported",
         f"`mesh_qps` ÷ `raw_qps` = {_n(r['mesh_qps'])} ÷ {_n(r['raw_qps'])}: queries/s through one entry node (`instant` backend) "
         f"÷ request/replies/s to a raw echo process, {c['in_flight']} in flight, {_n(c['mesh_queries'])} each"),
        ("`mesh_qps`", f"**{_n(r['mesh_qps'])}**", _target(r, "mesh_qps"), "the numerator above"),
        ("`rss_growth_mb`", f"**{_n(r['rss_growth_mb'], 1)}** after {_n(r['rss_growth_queries'])} queries", _target(r, "rss_growth_mb"),
         "node RSS after the throughput run minus after a 1,000-query warm-up"),
        ("`node_rss_mb`", _n(r["node_rss_mb"], 0), "", f"a `disrouter-node` process serving {c['model']} (transformers, fp32)"),
        ("`batching_speedup`", f"**{_n(r['batching_speedup'], 2)}**", _target(r, "batching_speedup"),
         f"transformers backend, the same {c['batch_queries']} completions of at most {c['batch_max_tokens']} tokens in each arm "
         f"({_n(tokens[0])} and {_n(tokens[1])} tokens generated): tokens/s at {conc} in flight ({_n(r[f'transformers_tokens_per_s_{conc}'], 1)}) "
         f"÷ at 1 ({_n(r['transformers_tokens_per_s_1'], 1)})"),
        ("`reject_cost_ratio`", f"**{_n(r['reject_cost_ratio'], 3)}**", _target(r, "reject_cost_ratio"),
         f"a rejection against a rejection: `probe` forwarding ÷ `generate` answering with the reject phrase, on the "
         f"{r['reject_cost_questions']} of {r['decision_questions']} questions `generate` rejects ({r['reject_cost_samples']} timings per arm, "
         f"arms interleaved), neither reusing the prefix KV cache "
         f"({_n(r['rejected_questions_ms']['probe_no_cache'], 1)} ms ÷ {_n(r['rejected_questions_ms']['generate'], 1)} ms)"),
        ("`reject_cost_ratio_served`", _n(r["reject_cost_ratio_served"], 3), "reported",
         f"the same with the probe as it is served, reusing the prefix KV cache ({_n(r['rejected_questions_ms']['probe'], 1)} ms); "
         "`generate` has no such cache"),
        ("decision ms: `generate` answer / reject", f"{_n(r['generate_answer_ms'], 1)} / {_n(r['generate_reject_ms'], 1)}", "",
         f"mean time of each decision type, one query at a time, `max_tokens` {c['answer_max_tokens']}"),
        ("decision ms: `probe` answer / reject", f"{_n(r['probe_answer_ms'], 1)} / {_n(r['probe_reject_ms'], 1)}", "",
         "thresholds set to force each decision (a probe's cost does not depend on its threshold); prefix cache on, as served"),
        ("`vllm_vs_transformers`", _n(r["vllm_vs_transformers"], 2), "reported",
         f"vLLM (CPU build, {r.get('vllm_mode', '–')} mode) tokens/s at {conc} in flight ({_n(r.get(f'vllm_tokens_per_s_{conc}'), 1)}) "
         f"÷ transformers at {conc}" if r["vllm_vs_transformers"] is not None else r.get("vllm_note", "not measured")),
    ]


def render(results: dict[str, Any], json_path: str = "bench/results/perf.json") -> str:
    """The markdown between the markers: where the figures come from, then the table."""
    run = results["run"]
    m = run["machine"]
    commit = (run["commit"] or "unknown")[:10] + (" plus uncommitted changes" if run["dirty"] else "")
    load = run["load_average_start"]
    lines = [
        f"`{run['command']}` at commit `{commit}`, {run['date']}, {results['seconds']:.0f} s; "
        f"{m['cpus']} × {m['cpu']}, {m['memory_gb']} GB, Python {m['python']}; load average {load[0]:.2f} at the start "
        f"({json_path}):",
        "",
        "| figure | value | target | what it is |",
        "|---|---|---|---|",
        *(f"| {' | '.join(row)} |" for row in rows(results)),
    ]
    return "\n".join(lines)


def between(readme: str, begin: str, end: str) -> str:
    """The generated text between two marker lines (ValueError when they are missing)."""
    if begin not in readme or end not in readme:
        raise ValueError(f"the README has no generated section (marker line {begin!r} or {end!r} missing)")
    return readme.split(begin, 1)[1].split(end, 1)[0].strip("\n")


def replace_between(path: Path, begin: str, end: str, body: str) -> None:
    """Rewrite the text between two marker lines of the file at ``path`` with ``body``."""
    text = path.read_text()
    if begin not in text or end not in text:
        raise ValueError(f"{path} has no line {begin!r} (or no {end!r} after it)")
    before, rest = text.split(begin, 1)
    path.write_text(f"{before}{begin}\n{body}\n{end}{rest.split(end, 1)[1]}")


def section(readme: str) -> str:
    """The generated performance table now in ``readme``."""
    return between(readme, BEGIN, END)


def update_readme(path: Path, results: dict[str, Any], json_path: str | None = None) -> None:
    replace_between(path, BEGIN, END, render(results, json_path or "bench/results/perf.json"))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m disrouter.bench.readme_table PERF_JSON README")
    update_readme(Path(sys.argv[2]), json.loads(Path(sys.argv[1]).read_text()), sys.argv[1])
