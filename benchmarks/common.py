"""What the benchmarks share: memory probes, the machine's matmul ceiling, a `softprompt serve` process, and
the results writer. Scripts in the group folders import it after putting this folder on their path:

    sys.path.insert(0, str(Path(__file__).parents[1]))  # benchmarks/: common.py
    from common import PeakRSS, write_results
"""

from __future__ import annotations

import ctypes
import gc
import json
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import torch

from softprompt.formats import atomic_write


# ---- memory ---------------------------------------------------------------------------------------------------
def base_rss_mb() -> float:
    """Resident memory (MB) after handing freed heap pages back to the OS: a measurement that starts here sees
    what it allocates, not pages an earlier one freed and glibc kept."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return rss_mb()


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident memory in MB (`field` of /proc/self/status: VmRSS all of it, RssAnon the part
    no file backs -- what memory-mapped weights add only once they are read)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class PeakRSS:
    """The highest resident memory (`field`, as `rss_mb`) above `base` (MB) while the block runs, sampled every
    5 ms in a thread."""

    def __init__(self, base: float, field: str = "VmRSS") -> None:
        self.base, self.field, self.mb, self._running = base, field, 0.0, True
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while self._running:
            self.mb = max(self.mb, rss_mb(self.field) - self.base)
            time.sleep(0.005)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._running = False
        self._thread.join()


# ---- the compute ceiling --------------------------------------------------------------------------------------
def matmul_gflops(dtype: torch.dtype, repeats: int = 7) -> float:
    """Best median GFLOP/s over shapes typical of this backbone's training matmuls (measured before and after
    the sides run; the larger is the ceiling: a busy machine only lowers it)."""
    best = 0.0
    for m, k, n in ((1344, 576, 1536), (1344, 1536, 576), (1024, 1024, 1024)):
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        for _ in range(2):
            a @ b
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(10):
                a @ b
            times.append((time.perf_counter() - started) / 10)
        best = max(best, 2 * m * k * n / statistics.median(times) / 1e9)
    return best


# ---- a server process -----------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`softprompt serve --model MODEL --prompts FOLDER` in its own process on a free loopback port, ready (its
    /healthz counts `expected` prompts) when the constructor returns; `stop()` ends it with SIGINT."""

    def __init__(self, folder: Path, mix: bool, batch_rows: int, expected: int = 8, extra: tuple = (),
                 model: str = "smollm2-135m") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        flag = "--mix-prompts" if mix else "--one-prompt-per-batch"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "softprompt", "serve", "--model", model, "--prompts", str(folder),
             "--port", str(self.port), flag, "--max-batch-rows", str(batch_rows), "--batch-wait-ms", "10",
             "--log-level", "warning", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as response:
                    if json.load(response)["prompts"] == expected:
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.time() > deadline:
                self.process.kill()
                raise RuntimeError(f"server did not start: {self.process.stderr.read()[-2000:]}")
            time.sleep(0.5)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def tree_pss_mb(self) -> float:
        """Memory of the server and every process it started (a vLLM engine's server and workers): the sum of
        their proportional set sizes, so pages they share (libraries, mapped weights) count once."""
        import psutil

        root = psutil.Process(self.process.pid)
        total = 0
        for proc in [root, *root.children(recursive=True)]:
            try:
                total += proc.memory_full_info().pss
            except psutil.Error:
                pass
        return total / 2**20

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as response:
            return response.read().decode()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


# ---- results --------------------------------------------------------------------------------------------------
def write_results(folder: Path, name: str, data: Any, markdown: str | None = None) -> Path:
    """`folder`/results/NAME.json (and NAME.md), each written whole or not at all; returns the JSON's path."""
    results = Path(folder) / "results"
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{name}.json"
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1)))
    if markdown is not None:
        atomic_write(results / f"{name}.md", lambda tmp: Path(tmp).write_text(markdown))
    return path
