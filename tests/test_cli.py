"""The `ecamp` command line: every stage registered, bare sub-command stages show their help."""

from __future__ import annotations

import pytest

from ecamp.cli import COMMANDS, build_parser, main


def test_every_stage_is_registered() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == {name for name, _ in COMMANDS if " " not in name}


def test_two_word_command_has_its_own_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "show", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ecamp pretrain show") and "Figure" in out and "--n" in out


@pytest.mark.parametrize("command", ["text", "tokenizer", "attention"])
def test_stage_without_its_sub_command_prints_its_help(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: ecamp {command}") and "SUBCOMMAND" in err
