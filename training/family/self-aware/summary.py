"""Print the per-tier, per-alpha summary table (README) from the eval reports in this folder."""

import json
from pathlib import Path

HERE = Path(__file__).parent
ARMS = (("SFT", "report-sft"), ("SFT+RL", "report-sftrl"))


print("| tier | arm | alpha | generate: trained util (answer rate) | always-reject | always-answer | random @ same rate | oracle "
      "| probe: util (answer rate) | threshold | probe's always-answer / oracle (expected) |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for tier in ("s", "m"):
    for arm, folder in ARMS:
        d = json.loads((HERE / tier / folder / "report.json").read_text())
        for alpha in ("0.2", "0.5", "0.8"):
            b, p = d["baselines"][alpha], d["probe_policy"][alpha]
            g = d["verdict"]["per_alpha"][alpha]
            thr = p["threshold"]
            flag = " (degenerate)" if thr in (0.0, 1.0) else ""
            print(f"| {tier} | {arm} | {alpha} | {g['utility']:.3f} ({g['answer_rate']:.2f}) | {b['always_reject']['utility']:.3f} | "
                  f"{b['always_answer']['utility']:.3f} | {b['random']['utility']:.3f} | {b['oracle']['utility']:.3f} | "
                  f"{p['utility']:.3f} ({p['answer_rate']:.2f}) | {thr:.3f}{flag} | {p['always_answer_utility']:.3f} / {p['oracle_utility']:.3f} |")
