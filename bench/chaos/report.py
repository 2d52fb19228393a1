"""Figures from a chaos run (chaos.json), a table (chaos.md) and a timeline (chaos.png)."""

from __future__ import annotations

import collections
import json
from pathlib import Path

from .faults import Fault
from ..wire import WireCount
from .load import Record

RETRYABLE = {"overloaded", "unavailable", "timeout", "deadline_exceeded", "interrupted"}  # README: safe to ask again
RECOVERED_RUN = 5  # consecutive answered queries that mark a recovery
AFTER_FAULT_S = 5.0  # a fault's window for "latency during faults" runs this long past its end


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(int(q * len(ordered)), len(ordered) - 1)], 1)


def _windows(faults: list[Fault]) -> list[tuple[float, float]]:
    return [(f.started, (f.ended or f.started) + AFTER_FAULT_S) for f in faults if f.started is not None and not f.skipped]


def _recovery_s(fault: Fault, records: list[Record], normal_ms: float) -> float | None:
    """From the fault until the first of RECOVERED_RUN consecutive queries sent after it that were answered within ``normal_ms``."""
    after = [r for r in records if r.sent >= fault.started]
    for i in range(len(after) - RECOVERED_RUN + 1):
        run = after[i:i + RECOVERED_RUN]
        if all(r.outcome == "answered" and r.latency_ms <= normal_ms for r in run):
            return round(run[0].done - fault.started, 2)
    return None


def summarize(records: list[Record], faults: list[Fault], wire: WireCount, meta: dict) -> dict:
    answered = [r for r in records if r.outcome == "answered"]
    errors = collections.Counter(r.outcome for r in records if r.outcome != "answered")
    windows = _windows(faults)
    during = [r.latency_ms for r in answered if any(a <= r.sent <= b for a, b in windows)]
    calm = [r.latency_ms for r in answered if not any(a <= r.sent <= b for a, b in windows)]
    normal_ms = max(1000.0, 3 * (_percentile(calm, 0.99) or 0))
    fault_rows = []
    for fault in faults:
        row = fault.as_dict()
        if fault.started is not None and not fault.skipped:
            row["recovered_s"] = _recovery_s(fault, records, normal_ms)
        fault_rows.append(row)
    return {
        **meta,
        "sent": len(records),
        "answered": len(answered),
        "lost": errors.get("timeout", 0),  # no final message by the deadline
        "duplicated": wire.duplicated_per_send + wire.answered_again,
        "duplicated_per_send": wire.duplicated_per_send,  # two final messages to one reply subject: a mesh fault
        "answered_again": wire.answered_again,  # a second Answer for one id, to a superseded send (re-send after silence)
        "answered_again_ids": sorted(q for q, n in wire.answers.items() if n > 1),  # to look the queries up in the node logs
        "errors_by_code": dict(errors),
        "non_retryable_errors": {code: n for code, n in errors.items() if code not in RETRYABLE},
        "latency_ms_p50": _percentile([r.latency_ms for r in answered], 0.5),
        "latency_ms_p99": _percentile([r.latency_ms for r in answered], 0.99),
        "latency_ms_p50_during_faults": _percentile(during, 0.5),
        "latency_ms_p99_during_faults": _percentile(during, 0.99),
        "latency_ms_p50_calm": _percentile(calm, 0.5),
        "latency_ms_p99_calm": _percentile(calm, 0.99),
        "recovered_means_ms_at_most": normal_ms,
        "streamed": sum(r.stream for r in records),
        "faults": fault_rows,
    }


def write(out: Path, figures: dict, records: list[Record]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "chaos.json").write_text(json.dumps(figures, indent=2) + "\n")
    (out / "chaos.md").write_text(_markdown(figures))
    _timeline(out / "chaos.png", figures, records)


def _markdown(f: dict) -> str:
    lines = [
        "# Chaos soak", "", f"Command: `{f['command']}`  ", f"Date: {f['date']}, commit {f['commit']}, load average at start {f['load_at_start']}  ", _partition_line(f.get("network_partition")), "",
        "| sent | answered | lost | duplicated (per send / answered again) | p50 ms | p99 ms | p50 / p99 ms during faults |",
        "|---|---|---|---|---|---|---|",
        f"| {f['sent']} | {f['answered']} | {f['lost']} | {f['duplicated']} ({f['duplicated_per_send']} / {f['answered_again']}) | "
        f"{f['latency_ms_p50']} | {f['latency_ms_p99']} | {f['latency_ms_p50_during_faults']} / {f['latency_ms_p99_during_faults']} |",
        "", f"Errors by code: {f['errors_by_code'] or 'none'}; not retryable: {f['non_retryable_errors'] or 'none'}", "",
        "| at s | fault | target | lasted s | recovered after s | note |", "|---|---|---|---|---|---|",
    ]
    for row in f["faults"]:
        lasted = round(row["ended"] - row["started"], 1) if row.get("ended") is not None and row.get("started") is not None else ""
        lines.append(f"| {row['at']} | {row['kind']} | {row['target']} | {lasted} | {row.get('recovered_s', '')} | {row['note']}{' (skipped)' if row['skipped'] else ''} |")
    return "\n".join(lines) + "\n"


def _partition_line(partition: dict | str | None) -> str:
    if isinstance(partition, dict) and partition.get("enabled"):
        return f"Network partition: on (NATS servers {', '.join(partition['servers'])} in namespaces {', '.join(partition['namespaces'])})"
    return f"Network partition: {partition.get('why') if isinstance(partition, dict) else partition}"


def _timeline(path: Path, figures: dict, records: list[Record]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = int(max((r.done for r in records), default=0)) + 1
    answered, failed = [0] * end, [0] * end
    for r in records:
        (answered if r.outcome == "answered" else failed)[min(int(r.done), end - 1)] += 1
    fig, ax = plt.subplots(figsize=(12, 4))
    ax.plot(range(end), answered, label="answered / s", color="tab:green")
    ax.bar(range(end), failed, label="errors / s", color="tab:red")
    colors = {"kill_node": "tab:red", "pause_node": "tab:orange", "kill_nats": "tab:purple", "drain_node": "tab:blue", "partition": "tab:brown"}
    for row in figures["faults"]:
        if row["skipped"] or row["started"] is None:
            continue
        ax.axvspan(row["started"], max(row["ended"] or row["started"], row["started"] + 0.5), alpha=0.2, color=colors[row["kind"]])
    from matplotlib.patches import Patch

    handles = ax.get_legend_handles_labels()[0] + [Patch(color=color, alpha=0.2, label=kind) for kind, color in colors.items()]
    ax.set_xlabel("seconds")
    ax.set_ylabel("queries")
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
