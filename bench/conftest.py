"""Benchmarks: run with `bash bench/run` (unsets OPENBLAS_CORETYPE for its own process only)."""
import os
import platform
from pathlib import Path

os.environ.setdefault("FASTSEQ_DATA_DIR", str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def machine_line():
    """CPU model, cores, BLAS and threads: printed with every results table."""
    import fastseq

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = fastseq.build_info()
    core = os.environ.get("OPENBLAS_CORETYPE", "unset")
    return (f"{cpu}, {os.cpu_count()} cores, {info['blas_config']}, {info['blas_threads']} BLAS threads, "
            f"OPENBLAS_CORETYPE={core}, Python {platform.python_version()}")


def pytest_report_header(config):
    return "machine: " + machine_line()
