"""The `e2i` command: every stage has --help with every flag described; user errors are one line."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from e2i.cli import STAGES, build_parser, main


def test_top_level_help_lists_every_stage(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for stage in STAGES:
        assert stage in out


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_flag_of_every_stage_has_help(stage):
    parser = build_parser(stage)
    sub = next(a for a in parser._actions if a.dest == "stage").choices[stage]
    flags = [a for a in sub._actions if a.option_strings and a.dest != "help"]
    for action in flags:
        assert action.help, f"e2i {stage} {action.option_strings[0]} has no help text"
    assert sub.format_help()


def test_user_error_is_one_line_with_exit_2(tmp_path, capsys):
    code = main(["train", str(tmp_path / "missing.yaml")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("e2i: error: ") and "missing.yaml" in err
    assert "\n" not in err and "Traceback" not in err


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "e2i", "--help"], capture_output=True, text=True, check=True)
    assert "cache" in out.stdout and "tune" in out.stdout


# ------------------------------------------------------------------------------------------ job entrypoints
ROOT = Path(__file__).resolve().parents[1]
HELP_ENV = {**os.environ, "COLUMNS": "120"}  # argparse wraps help at the terminal width


def help_stages(text: str) -> set[str]:
    """Stage names listed under `<stage>` in the `positional arguments:` section of `e2i --help`."""
    section = text.split("positional arguments:", 1)[1].split("options:", 1)[0]
    return set(re.findall(r"^    ([a-z][\w-]*)(?:\s{2,}|$)", section, re.MULTILINE))


def option_list(text: str) -> list[str]:
    """Every option string of a --help text, in order: `  -h, --help ...` -> ['-h', '--help']."""
    flags = []
    for line in text.splitlines():
        if re.match(r"^  -", line):
            invocation = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
            flags += [part.split()[0] for part in invocation.split(", ")]
    return flags


def test_every_stage_of_e2i_help_has_a_job_entrypoint():
    out = subprocess.run([sys.executable, "-m", "e2i", "--help"], capture_output=True, text=True, check=True,
                         env=HELP_ENV).stdout
    stages = help_stages(out)
    assert len(stages) >= 10 and {"cache", "train", "report"} <= stages
    assert {p.stem for p in (ROOT / "jobs").glob("*.py")} == stages == set(STAGES)


def test_job_entrypoints_take_exactly_the_flags_of_their_stage(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", HELP_ENV["COLUMNS"])
    scripts = sorted((ROOT / "jobs").glob("*.py"))
    procs = {}
    for i, script in enumerate(scripts):  # two at a time: each imports its stage's dependencies
        procs[script.stem] = subprocess.Popen([sys.executable, str(script), "--help"], cwd=ROOT, env=HELP_ENV,
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if i % 2:
            for p in procs.values():
                p.wait()
    for stage, proc in procs.items():
        out, err = proc.communicate()
        assert proc.returncode == 0, f"jobs/{stage}.py --help: {err}"
        with pytest.raises(SystemExit) as info:
            main([stage, "--help"])
        assert info.value.code == 0
        expected = capsys.readouterr().out
        assert option_list(expected)[:2] == ["-h", "--help"], stage
        assert option_list(out) == option_list(expected), f"jobs/{stage}.py"
        usage = out.split("\n\n", 1)[0]  # `usage: e2i <stage> [-h] ...` with its positionals, maybe wrapped
        assert usage.startswith(f"usage: e2i {stage} [-h]") and usage == expected.split("\n\n", 1)[0]
