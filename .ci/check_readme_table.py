"""Check that `e2i train configs/<x>.yaml` runs reproduced the README's "Shipped configs" table.

    python .ci/check_readme_table.py README.md results

Reads each table row (config, epochs, test t2i R@1, t2i R@10, t2i mAP@10, i2t R@1) and compares it
with results/<x>/metrics.json to the table's 3 decimals. Exit 1 with one line per mismatch.
"""
import json
import re
import sys
from pathlib import Path

ROW = re.compile(r"^\| `configs/(\w+)\.yaml` \| [^|]+ \| (\d+) \| ([\d.]+) \[[^]]+\] \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|")
KEYS = ("text_to_item/recall@1", "text_to_item/recall@10", "text_to_item/mAP@10", "item_to_text/recall@1")


def main(readme: str, results: str) -> int:
    rows = [m.groups() for m in map(ROW.match, Path(readme).read_text(encoding="utf-8").splitlines()) if m]
    if len(rows) < 4:
        print(f"{readme}: expected the 4 shipped-config rows, found {len(rows)}")
        return 1
    problems = []
    for name, epochs, *values in rows:
        metrics = json.loads((Path(results) / name / "metrics.json").read_text())
        got = [f"{metrics['test'][k]:.3f}" for k in KEYS]
        if int(epochs) != metrics["epochs"] or got != values:
            problems.append(f"configs/{name}.yaml: README epochs {epochs} {values}, run {metrics['epochs']} {got}")
        else:
            print(f"configs/{name}.yaml: OK (epochs {epochs}, t2i R@1/R@10/mAP@10, i2t R@1 = {got})")
    print(*problems, sep="\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
