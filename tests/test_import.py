"""`import fastseq` from the source tree, where the compiled modules are absent, says what is wrong
and what to do (it used to fail with "partially initialized module ... circular import")."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_from_the_source_tree_explains_itself():
    # -S: no site-packages, so neither an installed nor an editable fastseq can take precedence;
    # the source tree (the current folder, sys.path[0]) is what Python finds, as in a clean clone.
    r = subprocess.run([sys.executable, "-S", "-c", "import fastseq"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: fastseq: importing from its source tree")
    assert "circular import" not in r.stderr and "partially initialized" not in r.stderr
    assert "cd .." in last and "pip install --no-build-isolation -e ." in last
    assert ROOT in last


def test_import_elsewhere_works_and_the_train_function_does_not_hide_its_module():
    code = ("import fastseq, fastseq.training; "
            "assert callable(fastseq.train) and fastseq.train is fastseq.training.train; "
            "from fastseq.training import gradient_diagnostics; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(ROOT), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
