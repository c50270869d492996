"""Refresh the outputs of the calibration commands shown in README.md and docs/*.md.

    python docs/refresh_outputs.py

Every ``$ calibrate epsilon|q|transfer|curve ...`` line of a ```console block that shows its
output in full is run again and its output replaces the lines shown (tests/test_docs_outputs.py
checks that they agree). Run it after a change of the engine or of the validity map
(calibrate_cli/data/validity.json), whose verdict every such command prints.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ("epsilon", "q", "transfer", "curve")


def refresh(path: str, cwd: str) -> int:
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    out, i, inside, changed = [], 0, False, 0
    while i < len(lines):
        ln = lines[i]
        if ln.startswith("```"):
            inside = ln.startswith("```console") and not inside
            out.append(ln)
            i += 1
            continue
        if inside and ln.startswith("$ calibrate "):
            j = i + 1
            while j < len(lines) and not lines[j].startswith(("$ ", "```")):
                j += 1
            words = shlex.split(ln[2:])
            if (len(words) > 1 and words[1] in COMMANDS and "..." not in lines[i + 1:j]
                    and not {"--logits", "--from-model"} & set(words)):
                r = subprocess.run([sys.executable, "-m", "calibrate_cli", *words[1:]], cwd=cwd,
                                   capture_output=True, text=True,
                                   env=dict(os.environ, PYTHONPATH=REPO))
                if r.returncode != 0:
                    raise SystemExit(f"{path}: '{ln}' failed: {r.stderr.strip()}")
                new = r.stdout.rstrip("\n").split("\n")
                changed += new != lines[i + 1:j]
                out += [ln, *new]
                i = j
                continue
        out.append(ln)
        i += 1
    if changed:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write("\n".join(out))
    return changed


if __name__ == "__main__":
    pages = ["README.md"] + [os.path.join("docs", f) for f in
                             sorted(os.listdir(os.path.join(REPO, "docs"))) if f.endswith(".md")]
    with tempfile.TemporaryDirectory() as cwd:
        for page in pages:
            n = refresh(os.path.join(REPO, page), cwd)
            if n:
                print(f"{page}: {n} outputs refreshed")
