"""Check that `e2i train configs/<x>.yaml` runs reproduced the README's "Shipped configs" table.

    python .ci/check_readme_table.py README.md results

Reads each table row (config, epochs, test t2i R@1 [95% CI], t2i R@10, t2i mAP@10, i2t R@1) and compares
it with results/<x>/metrics.json. Same numbers to the table's 3 decimals: OK. Otherwise the row is still
accepted, and says so, when the run's epochs match, its t2i R@1 lies inside the row's 95% CI and every
other figure is within TOLERANCE: CPUs of different kernel families (e.g. with and without AMX) round
float32 matmuls differently, and a borderline choice can flip (mlp's trained epoch beat the CCA
warm start by 0.96 standard errors on one CPU, 1.09 on another, against a margin of 1). Anything
else is a stale or wrong table: exit 1 with one line per mismatch.
"""
import json
import re
import sys
from pathlib import Path

ROW = re.compile(r"^\| `configs/(\w+)\.yaml` \| [^|]+ \| (\d+) \| ([\d.]+) \[([\d.]+), ([\d.]+)\] \| ([\d.]+) \| "
                 r"([\d.]+) \| ([\d.]+) \|")
KEYS = ("text_to_item/recall@1", "text_to_item/recall@10", "text_to_item/mAP@10", "item_to_text/recall@1")
TOLERANCE = 0.1  # absolute, for R@10, mAP@10 and i2t R@1 when the numbers are not the same


def main(readme: str, results: str) -> int:
    rows = [m.groups() for m in map(ROW.match, Path(readme).read_text(encoding="utf-8").splitlines()) if m]
    if len(rows) < 4:
        print(f"{readme}: expected the 4 shipped-config rows, found {len(rows)}")
        return 1
    problems = []
    for name, epochs, r1, lo, hi, *others in rows:
        metrics = json.loads((Path(results) / name / "metrics.json").read_text())
        values = [r1, *others]
        got = [f"{metrics['test'][k]:.3f}" for k in KEYS]
        shown = f"README epochs {epochs} {values}, run {metrics['epochs']} {got}"
        if int(epochs) == metrics["epochs"] and got == values:
            print(f"configs/{name}.yaml: OK (epochs {epochs}, t2i R@1/R@10/mAP@10, i2t R@1 = {got})")
        elif int(epochs) == metrics["epochs"] and float(lo) <= float(got[0]) <= float(hi) and \
                all(abs(float(a) - float(b)) <= TOLERANCE for a, b in zip(got[1:], others)):
            print(f"configs/{name}.yaml: OK within tolerance ({shown}; t2i R@1 inside [{lo}, {hi}], "
                  f"others within {TOLERANCE}: float kernels differ by CPU)")
        else:
            problems.append(f"configs/{name}.yaml: {shown}")
    print(*problems, sep="\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
