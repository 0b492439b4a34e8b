"""``bench_stats.py`` with another ``torch.compile`` setting of the statistics reductions.

An experiment, not a library option: ``avsslib.tap`` compiles ``reduce_block_output`` with
``dynamic=True`` (one kernel set for every batch shape). This script swaps in ``dynamic=False``
(``static``: kernels specialised to the shape) or the default ``dynamic=None`` (``auto``:
static first, dynamic after a shape change) and then runs ``benchmarks/bench_stats.py`` with
the remaining arguments; ``dynamic`` leaves the library's setting as it is.

    python benchmarks/compile_variant.py static --config llama2-7b --device cuda \\
        --dtype bfloat16 --modes a,b --json out.json

Results of the 2026-11-29 run on one H200: ``results/bench/compile_variants/``.
"""

import json
import runpy
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import avsslib.tap as tap  # noqa: E402
from avsslib.reductions import reduce_block_output  # noqa: E402

VARIANTS = {"static": False, "auto": None}

if len(sys.argv) < 2 or sys.argv[1] not in (*VARIANTS, "dynamic"):
    sys.exit(f"usage: {sys.argv[0]} {{static,auto,dynamic}} [bench_stats.py arguments]")
variant = sys.argv.pop(1)
if variant in VARIANTS:
    tap._COMPILED = torch.compile(reduce_block_output, dynamic=VARIANTS[variant])
print(f"compile variant: {variant}", flush=True)
sys.argv[0] = str(ROOT / "benchmarks" / "bench_stats.py")
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:  # tag the report, so that the JSON says which variant it measured
    if "--json" in sys.argv[1:]:
        report = Path(sys.argv[sys.argv.index("--json") + 1])
        if report.is_file():
            data = json.loads(report.read_text())
            data["compile_variant"] = {"variant": variant, "dynamic": VARIANTS.get(variant, True)}
            report.write_text(json.dumps(data, indent=2) + "\n")
