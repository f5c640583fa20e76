"""Print the fenced code block between `<!-- NAME:begin -->` and `<!-- NAME:end -->` of a markdown file.

    python .ci/readme_block.py README.md follow-on
"""
import re
import sys
from pathlib import Path


def block(text: str, name: str) -> str:
    match = re.search(rf"<!-- {re.escape(name)}:begin -->\s*```\w*\n(.*?)```\s*<!-- {re.escape(name)}:end -->",
                      text, re.S)
    if not match:
        raise SystemExit(f"{name}: no <!-- {name}:begin --> ... <!-- {name}:end --> fenced block")
    return match.group(1)


if __name__ == "__main__":
    print(block(Path(sys.argv[1]).read_text(encoding="utf-8"), sys.argv[2]), end="")
