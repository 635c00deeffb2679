"""docs/operations: every shell block either starts with `# needs a cluster` or is run here as
written (bash -e -o pipefail, from the repository root, with the built binaries first on PATH
and a fresh scratch directory in $WORK) and must succeed, so the commands an operator copies
are the commands the tests ran."""
import os
import re
import subprocess

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DOCS = os.path.join(ROOT, "docs", "operations")
BIN = os.path.join(ROOT, ".build", "debug")
MARK = "# needs a cluster"
REQUIRED = ["observability.md", "runbook.md", "troubleshooting.md", "upgrade.md", "onboarding.md"]


def blocks():
    """(page, line, text) of every ```sh block, its indentation removed."""
    found = []
    for page in sorted(os.listdir(DOCS)):
        if not page.endswith(".md"):
            continue
        text = open(os.path.join(DOCS, page)).read()
        for match in re.finditer(r"^([ ]*)```(?:sh|bash|shell)\n(.*?)^\1```", text, re.MULTILINE | re.DOTALL):
            indent = match.group(1)
            body = "\n".join(line[len(indent):] if line.startswith(indent) else line for line in match.group(2).splitlines())
            found.append((page, text[:match.start()].count("\n") + 1, body))
    return found


BLOCKS = blocks()
RUNNABLE = [b for b in BLOCKS if not b[2].lstrip().startswith(MARK)]


def test_the_operations_pages_exist_and_hold_runnable_commands():
    pages = {page for page, _, _ in BLOCKS}
    assert set(REQUIRED) <= set(os.listdir(DOCS)), sorted(set(REQUIRED) - set(os.listdir(DOCS)))
    assert {"runbook.md", "troubleshooting.md", "upgrade.md", "onboarding.md"} <= {p for p, _, _ in RUNNABLE}, pages
    # A block either is marked or runs: there is no third kind (an unmarked block that is skipped).
    assert len(RUNNABLE) + sum(1 for b in BLOCKS if b[2].lstrip().startswith(MARK)) == len(BLOCKS)


@pytest.mark.parametrize("page,line,body", RUNNABLE, ids=[f"{p}:{line}" for p, line, _ in RUNNABLE])
def test_every_unmarked_command_runs(page, line, body, tmp_path):
    env = dict(os.environ, WORK=str(tmp_path), PATH=BIN + os.pathsep + os.environ["PATH"])
    result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", body], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, f"{page}:{line} failed\n--- block\n{body}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
