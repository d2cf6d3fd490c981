"""Every code line of README.md and docs/*.md runs as written, outside the source tree.

- ```python blocks of one document run in order in one interpreter (a later block may use what an
  earlier one defined, as a reader following the page would), in an empty folder.
- ```bash blocks of one document run in order in one empty folder (a later command may use the run
  folder an earlier one wrote); every `fastseq ...` command (also after `&&`) must exit with 0.
  Installation and test commands (python3 -m venv, pip, pytest, bash bench/run) are what CI's
  .ci/run runs from a clean clone; they are not repeated here. Commands run with FASTSEQ_SMOKE=1,
  the documented knob that caps corpus and model sizes (docs/COMMANDS.md), so they finish in seconds.
- ```text blocks are sample output and are not run; a fence without one of these languages fails.
- Every inline reference to the Python API (`fastseq.x.y`, `from fastseq.x import y`) resolves as written.
"""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import DATA_DIR, REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LANGUAGES = {"bash", "python", "text"}
NOT_RUN = ("python3 -m venv", "python -m venv", ". ", "source ", "pip ", "pytest", "bash bench/run")
FENCE = re.compile(r"^```(\S*)\s*$")


def blocks(path):
    """[(language, first line number, text)] of the fenced blocks of a Markdown file."""
    out, lang, start, body = [], None, 0, []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = FENCE.match(line)
        if m and lang is None:
            lang, start, body = m.group(1) or "(none)", i + 1, []
        elif line.startswith("```") and lang is not None:
            out.append((lang, start, "\n".join(body) + "\n"))
            lang = None
        elif lang is not None:
            body.append(line)
    assert lang is None, f"{path.name}: a code fence opened at line {start - 1} is never closed"
    return out


def commands(bash):
    """The fastseq commands of a bash block, continuation lines joined, comments and installs left out."""
    out = []
    for line in bash.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        for part in re.split(r"\s&&\s", line):
            words = shlex.split(part, comments=True)
            if not words or part.strip().startswith(NOT_RUN):
                continue
            assert words[0] == "fastseq" or " | fastseq " in part, f"not a fastseq command: {part!r}"
            out.append(part.strip())
    return out


def env():
    e = dict(os.environ, FASTSEQ_DATA_DIR=str(DATA_DIR), FASTSEQ_SMOKE="1", MPLBACKEND="Agg")
    e.pop("PYTHONPATH", None)
    return e


RUN_SESSION = '''
import json, sys, traceback
ns = {"__name__": "__main__"}
for where, src in json.load(sys.stdin):
    try:
        exec(compile(src, where, "exec"), ns)
    except Exception:
        print(f"{where}:\\n{src}", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
'''


def python_docs():
    return [p for p in DOCS if any(b[0] == "python" for b in blocks(p))]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_fence_names_its_language(path):
    for lang, line, _ in blocks(path):
        assert lang in LANGUAGES, f"{path.name}:{line - 1}: ```{lang}: say bash, python or text"


@pytest.mark.parametrize("path", python_docs(), ids=lambda p: p.name)
def test_python_blocks_run(path, tmp_path):
    import json

    todo = [(f"{path.name}:{line}", text) for lang, line, text in blocks(path) if lang == "python"]
    if any("torch" in text for _, text in todo):
        pytest.importorskip("torch")
    p = subprocess.run([sys.executable, "-c", RUN_SESSION], input=json.dumps(todo), cwd=tmp_path, env=env(),
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]


@pytest.mark.parametrize("path", [p for p in DOCS if any(b[0] == "bash" for b in blocks(p))],
                         ids=lambda p: p.name)
def test_bash_blocks_run(path, tmp_path):
    fastseq = Path(sys.executable).with_name("fastseq")
    todo = [(line, cmd) for lang, line, text in blocks(path) if lang == "bash" for cmd in commands(text)]
    assert todo
    for line, cmd in todo:
        # The `fastseq` next to this interpreter: the installed entry point, as the user has it.
        shell = cmd.replace("fastseq ", f"{shlex.quote(str(fastseq))} ", 1) if cmd.startswith("fastseq ") \
            else cmd.replace("| fastseq ", f"| {shlex.quote(str(fastseq))} ")
        p = subprocess.run(["bash", "-c", shell], cwd=tmp_path, env=env(), capture_output=True, text=True,
                           timeout=600)
        assert p.returncode == 0, f"{path.name}:{line}: {cmd}\nexit {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"


INLINE = re.compile(r"`((?:from fastseq[\w.]* import \w+)|(?:fastseq(?:\.\w+)+))")
FILE_NAMES = ("fastseq.json",)   # the checkpoint's manifest, not an API name


def inline_references():
    return sorted({m.group(1) for path in DOCS for m in INLINE.finditer(path.read_text(encoding="utf-8"))}
                  - set(FILE_NAMES))


def test_inline_api_references_resolve_as_written(tmp_path):
    refs = inline_references()
    assert refs
    code = (
        "import importlib.util, sys\n"
        "def is_module(name):\n"
        "    try:\n"
        "        return importlib.util.find_spec(name) is not None\n"
        "    except ImportError:   # a parent is not a package\n"
        "        return False\n"
        "bad = []\n"
        "for ref in sys.argv[1:]:\n"
        "    try:\n"
        "        if ref.startswith('from '):\n"
        "            exec(ref, {})\n"
        "            continue\n"
        "        parts = ref.split('.')\n"
        "        # `import` the longest module prefix, then read the rest as attributes: what a reader types.\n"
        "        k = max(i for i in range(1, len(parts) + 1) if is_module('.'.join(parts[:i])))\n"
        "        ns = {}\n"
        "        exec('import ' + '.'.join(parts[:k]), ns)\n"
        "        eval(ref, ns)\n"
        "    except Exception as e:\n"
        "        bad.append(f'{ref}: {type(e).__name__}: {e}')\n"
        "print('\\n'.join(bad))\n"
        "sys.exit(1 if bad else 0)\n")
    p = subprocess.run([sys.executable, "-c", code, *refs], cwd=tmp_path, env=env(), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
