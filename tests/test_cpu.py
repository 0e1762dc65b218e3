"""Process-wide CPU settings (`softprompt.cpu`): freed activations stay for reuse, and an idle server hands them
back."""

import subprocess
import sys
import textwrap
import time

import served
import tiny

from softprompt.serve import batcher as batcher_module

# A fresh process: glibc's thresholds are process-wide and this test process has already changed them.
_RSS_AFTER_FREE = textwrap.dedent("""
    import sys, torch
    from softprompt.cpu import keep_freed_memory, release_free_memory

    def rss_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    if sys.argv[1] == "keep":
        assert keep_freed_memory() and keep_freed_memory()   # applied, and idempotent
    block = torch.ones(5 * 1024 * 1024)                          # 20 MB, touched
    before = rss_mb()
    del block
    after_free = rss_mb()
    release_free_memory()
    print(before - after_free, before - rss_mb())
""")


def _freed_mb(mode: str) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", _RSS_AFTER_FREE, mode], capture_output=True, text=True, check=True)
    dropped, dropped_after_release = (float(x) for x in out.stdout.split())
    return dropped, dropped_after_release


def test_freed_activations_stay_resident_until_released():
    dropped, _ = _freed_mb("default")
    assert dropped > 15                      # glibc's default: a 20 MB block goes straight back to the kernel
    kept, released = _freed_mb("keep")
    assert kept < 5                          # kept for the next pass
    assert released > 15                     # and handed back on request


def test_an_idle_server_releases_memory_once_after_work(monkeypatch, tiny_llama, tmp_path):

    from softprompt import save_prompt

    calls = []
    monkeypatch.setattr(batcher_module, "IDLE_RELEASE_SECONDS", 0.05)
    monkeypatch.setattr(batcher_module, "release_free_memory", lambda: calls.append(time.monotonic()))
    folder = tmp_path / "prompts"
    folder.mkdir()
    save_prompt(folder / "sentiment.safetensors", tiny.classifier(tiny_llama, "prefix", 5, 1))
    with served.client(tiny_llama, folder) as client:
        time.sleep(0.3)
        assert calls == []                   # nothing ran yet: nothing to hand back
        response = client.post("/v1/classify", json={"prompt": "sentiment", "inputs": ["fine"]})
        assert response.status_code == 200, response.text
        time.sleep(0.4)
        assert len(calls) == 1               # once after the work, not on every idle tick
