"""`ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- python jobs/baseline.py ...`

Takes exactly the flags of `e2i baseline` (see `e2i baseline --help`).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the job's working_dir holds e2i/

from e2i.cli import main  # noqa: E402

raise SystemExit(main(["baseline", *sys.argv[1:]]))
