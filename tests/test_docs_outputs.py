"""The outputs shown in the README and on the documentation site are what the commands print.

Every ```console block of README.md and docs/*.md is read; each ``$ calibrate ...`` line of a
calibration command shown in full (no ``...``; no measured logits, which need a file or torch)
is run, and its stdout must be the lines shown, to the last digit. When a result changes (the
engine, the validity map), the shown output is refreshed from the command, not edited by hand.
"""

from __future__ import annotations

import os
import re
import shlex

import pytest

from helpers import REPO, run

PAGES = ["README.md"] + sorted(
    os.path.join("docs", f) for f in os.listdir(os.path.join(REPO, "docs")) if f.endswith(".md"))
COMMANDS = ("epsilon", "q", "transfer", "curve")


def _shown(page: str):
    with open(os.path.join(REPO, page), encoding="utf-8") as fh:
        text = fh.read()
    for block in re.findall(r"```console\n(.*?)```", text, re.S):
        lines = block.rstrip("\n").split("\n")
        starts = [i for i, ln in enumerate(lines) if ln.startswith("$ ")] + [len(lines)]
        for a, b in zip(starts, starts[1:]):
            words = shlex.split(lines[a][2:])
            shown = lines[a + 1:b]
            if (words[0] == "calibrate" and len(words) > 1 and words[1] in COMMANDS
                    and "..." not in shown
                    and not {"--logits", "--from-model"} & set(words)):
                yield page, words[1:], shown


CASES = [case for page in PAGES for case in _shown(page)]


def test_the_pages_show_calibration_outputs():
    pages = {page for page, _, _ in CASES}
    assert {"README.md", os.path.join("docs", "commands.md")} <= pages
    assert len(CASES) >= 8


@pytest.mark.parametrize("page,args,shown", CASES,
                         ids=[f"{p}:{' '.join(a)}" for p, a, _ in CASES])
def test_shown_output_is_the_commands_output(page, args, shown):
    r = run(*args)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.rstrip("\n").split("\n") == shown, (
        f"{page}: the output of 'calibrate {' '.join(args)}' changed; paste the new one")
