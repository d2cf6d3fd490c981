import os
import signal
from pathlib import Path

import pytest

# Tests read the corpora from ../shared/data (beside the clone), never from the network.
_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
os.environ.setdefault("FASTSEQ_DATA_DIR", str(_SHARED))


@pytest.fixture(autouse=True, scope="session")
def _outside_the_source_tree(tmp_path_factory):
    """Run from an empty folder: a subprocess started with `python -m fastseq` or `python -c`
    puts its working directory first on sys.path, and the source tree's fastseq/ (without the
    compiled modules) would shadow the installed package."""
    old = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(old)


@pytest.fixture(autouse=True, scope="session")
def _ctrl_c_as_at_a_terminal():
    """A shell that starts the suite as a background job without job control (as a CI script may) sets
    SIGINT to 'ignored', and the interpreter and every child inherit that: the Ctrl-C tests could then
    deliver no signal. Give this process Python's default handler, as a terminal user has; children
    started from it begin with the default disposition."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield


@pytest.fixture
def no_hang():
    """Fail (instead of hanging the suite) if a read blocks, as opening a FIFO does until a writer comes."""
    import signal

    def alarm(*_):
        raise TimeoutError("blocked: a read waited more than 10 s")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)
