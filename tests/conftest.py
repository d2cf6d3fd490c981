import os
from pathlib import Path

# Tests read the corpora from ../shared/data (beside the clone), never from the network.
_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
os.environ.setdefault("FASTSEQ_DATA_DIR", str(_SHARED))
