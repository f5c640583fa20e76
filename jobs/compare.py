"""`ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- python jobs/compare.py ...`

Takes exactly the flags of `e2i compare` (see `e2i compare --help`).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the job's working_dir holds e2i/

from e2i.cli import main  # noqa: E402

raise SystemExit(main(["compare", *sys.argv[1:]]))
