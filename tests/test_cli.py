"""The `e2i` command: every stage has --help with every flag described; user errors are one line."""

import subprocess
import sys

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
