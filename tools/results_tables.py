"""Markdown tables of the committed runs under results/ (for issue closing notes and reviews).

Reads only the result files (retention.csv, sweep.csv, agreement.csv, label_summary.csv,
prone_layers.json, mitigation/summary.csv, bench/*.json); nothing is typed in.

    .venv/bin/python tools/results_tables.py [--results results] [--part avss|eavss|bench|all]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from avsslib.reproduce import RELATIVE_BASE_FLOOR

TASKS = [("sciq_mc", "acc"), ("sst2", "acc"), ("triviaqa_em", "exact_match"),
         ("wikitext2_ppl", "token_perplexity")]


def _md(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def _ci(r) -> str:
    return f"{r.retention:.3g} [{r.ci_low:.3g}, {r.ci_high:.3g}]"


def avss(root: Path) -> str:
    out = []
    for model in sorted(p.name for p in root.iterdir() if (p / "avss" / "retention.csv").is_file()):
        folder = root / model / "avss"
        ret = pd.read_csv(folder / "retention.csv")
        n = int(ret["n"].max())
        orig = ret[ret["config"] == "original"].set_index(["task", "metric"])
        rows = []
        main = ret[(ret["config"] != "original") & ~ret["config"].str.startswith("sweep")]
        for config, g in main.groupby("config", sort=False):
            g = g.set_index(["task", "metric"])
            row = {"configuration": config, "pruned": int(g["n_pruned"].iloc[0]),
                   "pruned layers": g["layers"].iloc[0]}
            for task, metric in TASKS:
                row[task] = _ci(g.loc[(task, metric)]) if (task, metric) in g.index else ""
            rows.append(row)
        base = ", ".join(f"{t} {orig.loc[(t, m), 'original']:.4g}" for t, m in TASKS if (t, m) in orig.index)
        fraction = ", ".join(f"{f:.0%}" for f in sorted(set(main["fraction"])))
        out.append(f"**{model}**, pruned fraction {fraction} (the `mass` and `code_bug` rules choose "
                   f"their own count), retention [95% CI], n = {n} examples per task at most "
                   f"(perplexity inverted; original: {base}):\n\n" + _md(pd.DataFrame(rows)))
        sweep = pd.read_csv(folder / "sweep.csv")
        sweep = sweep[(sweep["task"] == "sciq_mc") & (sweep["metric"] == "acc")]
        piv = sweep.assign(value=[_ci(r) for r in sweep.itertuples()]).pivot_table(
            index="fraction", columns="score", values="value", aggfunc="first").reset_index()
        out.append(f"**{model}**, SciQ accuracy retention against the pruned fraction:\n\n" + _md(piv))
        agr = pd.read_csv(folder / "agreement.csv")
        agr = agr.assign(spearman=agr["spearman"].map("{:.2f}".format),
                         kendall_tau=agr["kendall_tau"].map("{:.2f}".format))
        out.append(f"**{model}**, rank agreement over {int(agr['n_layers'].iloc[0])} layers:\n\n"
                   + _md(agr[["kind", "a", "b", "spearman", "kendall_tau"]]))
    return "\n\n".join(out)


def eavss(root: Path) -> str:
    out, rates = [], []
    for model in sorted(p.name for p in root.iterdir() if (p / "eavss" / "label_summary.csv").is_file()):
        labels = pd.read_csv(root / model / "eavss" / "label_summary.csv")
        prone = json.loads((root / model / "eavss" / "prone_layers.json").read_text())["prone"]
        for r in labels.itertuples():
            fam = prone.get(r.dataset, {})
            rates.append({"model": model, "dataset": r.dataset, "n": r.n,
                          "hallucination rate [95% CI]": f"{r.hallucination_rate:.3f} "
                                                         f"[{r.ci_low:.3f}, {r.ci_high:.3f}]",
                          "prone layers P": " ".join(map(str, fam.get("P", {}).get("layers", []))),
                          "prone layers C": " ".join(map(str, fam.get("C", {}).get("layers", [])))})
    out.append("Hallucination labels and prone layers:\n\n" + _md(pd.DataFrame(rates)))
    rows = []
    for path in sorted(root.glob("*/mitigation/summary.csv")):
        s = pd.read_csv(path)
        for (model, dataset, task, metric), g in s.groupby(["model", "dataset", "task", "metric"]):
            row = {"model": model, "dataset": dataset, "task (metric)": f"{task} ({metric})",
                   "base": f"{g['before'].iloc[0]:.3f}"}
            tiny = g["before"].iloc[0] < RELATIVE_BASE_FLOOR
            for mode in ("eavss", "random", "avss", "full"):
                m = g[g["mode"] == mode]
                rel = "rel. n/a" if tiny else f"{m['delta_rel'].mean():+.0%}"
                row[mode] = "" if m.empty else (
                    f"{m['after'].mean():.3f} ({m['delta_abs'].mean():+.3f}; {rel}; "
                    f"[{m['abs_ci_low'].min():+.3f}, {m['abs_ci_high'].max():+.3f}]; "
                    f"{m['seed'].nunique()} seeds)")
            rows.append(row)
    out.append("Mitigation: mean after-value over seeds (mean absolute change; mean relative change, "
               f"n/a on a base under {RELATIVE_BASE_FLOOR:.0%}; the lowest lower and highest upper "
               "bound of the seeds' 95% bootstrap intervals of the absolute change; seeds):\n\n"
               + _md(pd.DataFrame(rows)))
    return "\n\n".join(out)


def bench(root: Path) -> str:
    rows = []
    for path in sorted((root / "bench").glob("**/*.json")):
        d = json.loads(path.read_text())
        if not isinstance(d, dict) or "environment" not in d:
            continue
        env, st = d["environment"], d.get("settings", {})
        row = {"file": str(path.relative_to(root)), "device": env.get("device_name"),
               "model": d.get("model", {}).get("id", ""),
               "batches x shape": f"{st.get('batches', '')} x {st.get('batch_size', '')} x "
                                  f"{st.get('seq_len', '')}", "repeats": st.get("repeats", "")}
        r = d.get("ratios") or {}
        if r:
            row.update({"(b)/(a)": f"{r['b_over_a']:.3f}" if "b_over_a" in r else "",
                        "(c)/(b)": f"{r['c_over_b']:.1f}" if "c_over_b" in r else ""})
        elif "speedup" in d:
            row.update({"device": f"{env['world_size']} x {env['device_name']}",
                        "speed-up": f"{d['speedup']:.2f} (ideal {d['ideal_speedup']})"})
        else:
            continue
        rows.append(row)
    out = ["Benchmarks:\n\n" + _md(pd.DataFrame(rows).fillna(""))]
    for path in sorted((root / "bench").glob("sweep_*.csv")):
        sweep = pd.read_csv(path)
        sweep = sweep[sweep["status"] == "ok"] if "status" in sweep else sweep
        cell = [f"{r.layerstats_tokens_per_s:,.0f} ({r.ratio_b_over_a:.3f})" for r in sweep.itertuples()]
        piv = sweep.assign(cell=cell).pivot_table(index="batch_size", columns="seq_len", values="cell",
                                                  aggfunc="first")
        out.append(f"`{path.relative_to(root)}`: LayerStats tokens/s (time ratio to a bare forward), "
                   "rows batch size, columns sequence length:\n\n" + _md(piv.reset_index()))
    return "\n\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--part", choices=("avss", "eavss", "bench", "all"), default="all")
    args = parser.parse_args()
    parts = {"avss": avss, "eavss": eavss, "bench": bench}
    chosen = parts if args.part == "all" else {args.part: parts[args.part]}
    print("\n\n".join(f(args.results) for f in chosen.values()))


if __name__ == "__main__":
    main()
