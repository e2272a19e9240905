"""The paper-kit subcommands (compare, layers, heatmap) share one command line: registered, bilingual --help."""

from __future__ import annotations

import re

import pytest

from ultralytics_addmodules import __main__ as cli

HAN = re.compile(r"[\u4e00-\u9fff]")


@pytest.mark.parametrize("command, english", [
    ("compare", "Compare models"), ("layers", "Per-layer parameters"), ("heatmap", "class-activation heatmap"),
])
def test_help_is_chinese_then_english(capsys, command, english):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    description = " ".join(out.split("\n\n")[1].split())  # the paragraph after the usage lines
    zh, _, en = description.partition(" | ")
    assert HAN.search(zh) and english in en and not HAN.search(en)
    options = out.split("options:")[1]
    assert HAN.search(options) and "--project" in options  # every option explained in both languages


def test_top_level_help_lists_the_paper_commands(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for command in ("compare", "layers", "heatmap"):
        assert re.search(rf"^\s+{command}\s+\S", out, re.M), command
