"""Every compiled entry point, public or private, against hostile arguments: only Python exceptions.

fastseq._core (C++), fastseq._text and fastseq.ngram._count (Cython) are called with wrong dtypes,
shapes, strides, alignments, ids from -2^63 to 2^63-1, NaN/inf, empty arrays and aliased buffers.
The contract of each: a bad argument raises fastseq.errors.ArgumentError (a ValueError) whose
message starts with the argument's name; nothing reads or writes out of bounds.

Cases that crashed the process before the checks existed run in a subprocess, so a regression
fails one test instead of ending the suite. The hypothesis tests run in-process: they rely on the
checks being complete (the sanitizer run, tools/sanitize, runs them under AddressSanitizer).
"""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fastseq import _core, _text
from fastseq.errors import ArgumentError
from fastseq.ngram import _count

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


def run_isolated(code):
    """Run code in a fresh interpreter; returns (returncode, stdout+stderr)."""
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout + p.stderr


# ----------------------------------------------------------------------------- crashes found today (issue 12, item 6)
# Each of these segfaulted, corrupted the heap or read out of bounds before the checks.
CRASHES = {
    "count_ids_far": ("ids", "_text.count_ids(np.array([10**8], np.int32), 1)"),
    "count_ids_heap": ("ids", "_text.count_ids(np.array([3, 4, 5], np.int32), 3)"),
    "count_ids_negative": ("ids", "_text.count_ids(np.array([-1], np.int32), 3)"),
    "count_ids_none": ("ids", "_text.count_ids(None, 3)"),
    "count_codepoints": ("cps", "_text.count_codepoints(np.array([0xFFFFFFFF], np.uint32))"),
    "count_codepoints_edge": ("cps", "_text.count_codepoints(np.array([0x110000], np.uint32))"),
    "remap_far": ("ids", "_text.remap(np.array([10**8], np.int32), np.zeros(3, np.int32))"),
    "remap_small_overrun": ("ids", "_text.remap(np.array([3], np.int32), np.zeros(3, np.int32))"),
    "remap_negative": ("ids", "_text.remap(np.array([-5], np.int32), np.zeros(3, np.int32))"),
    "remap_codepoints": ("cps", "_text.remap_codepoints(np.array([0xFFFFFFFF], np.uint32), "
                                "np.zeros(0x110000, np.int32))"),
    "remap_codepoints_short_table": ("cps", "_text.remap_codepoints(np.array([70000], np.uint32), "
                                            "np.zeros(10, np.int32))"),
    "backoff_starts_far": ("starts", """_count.backoff_logp(np.array([0, 1], np.int64), np.array([0, 1], np.int64),
        [np.zeros(0, np.int64), np.array([0, 10**9, 10**9], np.int64)],
        [np.array([0, 1], np.int32), np.array([1], np.int32)],
        [np.zeros(2), np.zeros(1)], [np.zeros(2), np.zeros(1)])"""),
    "backoff_starts_negative": ("starts", """_count.backoff_logp(np.array([0, 1], np.int64), np.array([0, 1], np.int64),
        [np.zeros(0, np.int64), np.array([-10**9, 0, 1], np.int64)],
        [np.array([0, 1], np.int32), np.array([1], np.int32)],
        [np.zeros(2), np.zeros(1)], [np.zeros(2), np.zeros(1)])"""),
    "backoff_starts_decreasing": ("starts", """_count.backoff_logp(np.array([1, 1], np.int64), np.array([0, 1], np.int64),
        [np.zeros(0, np.int64), np.array([1, 0, 1], np.int64)],
        [np.array([0, 1], np.int32), np.array([1], np.int32)],
        [np.zeros(2), np.zeros(1)], [np.zeros(2), np.zeros(1)])"""),
    "intern_tokens_eq_clears": ("", """
        class Evil(str):
            def __hash__(self):
                return 1
            def __eq__(self, other):
                toks.clear()  # frees every token not yet interned
                return False
        toks = [Evil("a" * 1000 + str(i)) for i in range(20)]
        ids, uniq = _text.intern_tokens(toks)
        assert ids.tolist() == list(range(20)) and [u[1000:] for u in uniq] == [str(i) for i in range(20)]
        print("OK")"""),
}


_PRELUDE = """
import sys, traceback
import numpy as np
from fastseq import _text
from fastseq.ngram import _count
from fastseq.errors import ArgumentError
"""


def _case_source(case):
    """A function body that prints 'OK' when the case behaves: ArgumentError naming the argument."""
    name, call = CRASHES[case]
    body = textwrap.dedent(call)
    if name:
        body = (f"try:\n{textwrap.indent(body, '    ')}\n    print('no error')\n"
                f"except ArgumentError as e:\n"
                f"    print('OK' if str(e).startswith({name!r}) else 'wrong message: ' + str(e))\n")
    return f"def case_{case}():\n{textwrap.indent(body, '    ')}\n"


@pytest.fixture(scope="module")
def crash_results():
    """Every case in as few interpreters as possible: a case that kills its interpreter is recorded
    with the exit status and the remaining cases go on in a fresh one."""
    results, todo = {}, sorted(CRASHES)
    while todo:
        src = _PRELUDE + "".join(_case_source(c) for c in todo) + textwrap.dedent(f"""
            for c in {todo!r}:
                print("START", c, flush=True)
                try:
                    globals()["case_" + c]()
                except BaseException:
                    traceback.print_exc(file=sys.stdout)
                print("END", c, flush=True)
            """)
        rc, out = run_isolated(src)
        current, lines = None, []
        for line in out.splitlines():
            if line.startswith("START "):
                current, lines = line[6:], []
            elif line.startswith("END ") and current:
                results[current] = "\n".join(lines)
                current = None
            elif current:
                lines.append(line)
        done = [c for c in todo if c in results]
        if current is not None:
            results[current] = f"the interpreter died (exit {rc}):\n" + "\n".join(lines) + out[-1500:]
            done.append(current)
        elif len(done) < len(todo):
            raise AssertionError(f"exit {rc} before any case ran:\n{out[-3000:]}")
        todo = [c for c in todo if c not in done]
    return results


@pytest.mark.parametrize("case", sorted(CRASHES))
def test_crash_found_today_is_an_argument_error(case, crash_results):
    assert crash_results[case].strip().endswith("OK"), crash_results[case]
