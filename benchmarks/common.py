"""What the benchmarks share: machine description, device sync, a wall clock and a peak-memory probe."""
from __future__ import annotations

import json
import os
import platform
import resource
import threading
import time
from pathlib import Path
from typing import Optional

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine(device: str) -> dict:
    """Python/torch versions, platform, processor, CPU count, intra-op threads, device (GPU name on cuda), and the
    1-minute load average when measured: a load above the CPU count means other jobs shared the cores and the
    timings are upper bounds."""
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(), "device": device}
    if hasattr(os, "getloadavg"):
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def result_path(out: Path, name: str, device: str, quick: bool) -> Path:
    """``<out>/<name>_<device>[_quick].json``."""
    return Path(out) / f"{name}_{device}{'_quick' if quick else ''}.json"


def write_result(doc: dict, out: Path, name: str, device: str, quick: bool) -> Path:
    """Write ``doc`` as indented JSON to ``result_path(out, name, device, quick)`` (folders made); returns the path."""
    path = result_path(out, name, device, quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def sync(device: str) -> None:
    """Wait for queued device work (cuda), so that wall-clock times are complete."""
    if device == "cuda":
        torch.cuda.synchronize()


def process_peak_rss_mb() -> float:
    """Peak resident set size of this process since it started (MiB; ``ru_maxrss``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mb() -> Optional[float]:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * resource.getpagesize() / 2**20


class PeakMemory:
    """Peak memory while inside the ``with`` block: resident set size sampled every ``interval`` s from
    /proc/self/statm by a background thread (``rss_mb``; the process peak ``ru_maxrss`` where /proc is
    missing), and on cuda the peak allocated by torch (``cuda_mb``, counters reset on entry)."""

    def __init__(self, device: str, interval: float = 0.005) -> None:
        self.device, self.interval = device, interval
        self.rss_mb: Optional[float] = None
        self.cuda_mb: Optional[float] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _poll(self) -> None:
        while not self._stop.is_set():
            now = _current_rss_mb()
            if now is not None:
                self.rss_mb = max(self.rss_mb or 0.0, now)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.rss_mb = _current_rss_mb()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        now = _current_rss_mb()
        self.rss_mb = process_peak_rss_mb() if now is None else max(self.rss_mb or 0.0, now)
        if self.device == "cuda":
            self.cuda_mb = torch.cuda.max_memory_allocated() / 2**20

    def as_dict(self) -> dict:
        """``{"peak_rss_mb": ...[, "cuda_peak_allocated_mb": ...]}``."""
        out = {"peak_rss_mb": self.rss_mb}
        if self.cuda_mb is not None:
            out["cuda_peak_allocated_mb"] = self.cuda_mb
        return out


class Clock:
    """Wall-clock seconds of a ``with`` block, device work included (``seconds``)."""

    def __init__(self, device: str) -> None:
        self.device, self.seconds = device, 0.0

    def __enter__(self) -> "Clock":
        sync(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        sync(self.device)
        self.seconds = time.perf_counter() - self._start
