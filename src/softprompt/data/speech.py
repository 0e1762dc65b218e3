"""A SYNTHETIC spoken-command dataset: Speech Commands' ten words spoken by the espeak-ng speech synthesiser.

This is not recorded speech. Every clip is generated locally with espeak-ng (`apt-get install espeak-ng sox`):
the ten command words of Speech Commands (yes, no, up, down, left, right, on, off, stop, go), each spoken with
every "speaker setting" = (espeak voice, speed `-s` in words per minute, pitch `-p`), resampled to 16 kHz mono
with sox, then mixed with seeded white noise at a signal-to-noise ratio picked per clip (clean, 20 dB, 10 dB).
Synthetic voices are far more regular than people: figures on this set say nothing about real speech.

Splits are by speaker setting (a seeded shuffle), so the test settings (voice x speed x pitch) are never seen
in training. Rows are `{"audio": float32 tensor (samples,) at 16 kHz, "label": word, "voice", "speed", "pitch",
"snr_db"}`. The whole set is generated once and cached under the softprompt cache root
(`$SOFTPROMPT_CACHE/datasets/<name>/`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
import torch

from ..cache import cache_root
from ..errors import DataError

COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
VOICES = ("en-us", "en-us+f3", "en-us+m3", "en-gb", "en-gb-x-rp", "en-sc", "en-029", "en-us+f2")
SPEEDS = (130, 165, 200)
PITCHES = (35, 65)
SNRS_DB = (None, 20.0, 10.0)  # None = clean
SAMPLE_RATE = 16000
DATASET_NAME = "speech-commands-synth"
VERSION = 1


def require_tools() -> None:
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        raise DataError(f"the synthetic speech dataset needs {' and '.join(missing)}: "
                        f"`apt-get install -y espeak-ng sox`")


def read_wav(path: str | Path) -> np.ndarray:
    """A 16-bit PCM mono WAV file as float32 in [-1, 1]."""
    with wave.open(str(path)) as handle:
        if handle.getsampwidth() != 2 or handle.getnchannels() != 1:
            raise DataError(f"{path}: expected 16-bit mono PCM")
        return np.frombuffer(handle.readframes(handle.getnframes()), dtype=np.int16).astype(np.float32) / 32768.0


def synthesise(text: str, *, voice: str = "en-us", speed: int = 175, pitch: int = 50,
               sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """`text` spoken by espeak-ng, resampled by sox to `sample_rate` mono: float32 (samples,)."""
    require_tools()
    with tempfile.TemporaryDirectory() as tmp:
        raw, out = Path(tmp) / "raw.wav", Path(tmp) / "out.wav"
        subprocess.run(["espeak-ng", "-w", str(raw), "-v", voice, "-s", str(speed), "-p", str(pitch), text],
                       check=True, capture_output=True)
        subprocess.run(["sox", str(raw), "-r", str(sample_rate), "-c", "1", "-b", "16", str(out)],
                       check=True, capture_output=True)
        return read_wav(out)


def add_noise(audio: np.ndarray, snr_db: float | None, rng: np.random.Generator) -> np.ndarray:
    """White noise at `snr_db` relative to the clip's power (None = unchanged)."""
    if snr_db is None:
        return audio
    power = float(np.mean(audio ** 2)) or 1e-8
    noise = rng.standard_normal(audio.shape).astype(np.float32) * np.sqrt(power / 10 ** (snr_db / 10))
    return np.clip(audio + noise, -1.0, 1.0).astype(np.float32)


def speaker_settings() -> list[tuple[str, int, int]]:
    return list(itertools.product(VOICES, SPEEDS, PITCHES))


def split_settings(seed: int = 13, validation: int = 6, test: int = 12) -> dict[str, list[tuple[str, int, int]]]:
    """A seeded shuffle of the (voice, speed, pitch) settings into disjoint train / validation / test."""
    settings = speaker_settings()
    random.Random(seed).shuffle(settings)
    return {"test": sorted(settings[:test]), "validation": sorted(settings[test:test + validation]),
            "train": sorted(settings[test + validation:])}


def _clip_seed(voice: str, speed: int, pitch: int, word: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}|{voice}|{speed}|{pitch}|{word}".encode()).digest()[:8], "little")


def _generate(seed: int) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for split, settings in split_settings(seed).items():
        rows = []
        for voice, speed, pitch in settings:
            for word in COMMANDS:
                rng = np.random.default_rng(_clip_seed(voice, speed, pitch, word, seed))
                snr = SNRS_DB[int(rng.integers(len(SNRS_DB)))]
                audio = add_noise(synthesise(word, voice=voice, speed=speed, pitch=pitch), snr, rng)
                rows.append({"audio": torch.from_numpy(audio.copy()), "label": word, "voice": voice, "speed": speed,
                             "pitch": pitch, "snr_db": snr})
        out[split] = rows
    return out


def speech_commands_synth(*, seed: int = 13, rebuild: bool = False) -> dict[str, list[dict]]:
    """The synthetic spoken-command splits {train, validation, test}, generated once and cached."""

    folder = cache_root() / "datasets" / f"{DATASET_NAME}-v{VERSION}-seed{seed}"
    path = folder / "splits.pt"
    if path.is_file() and not rebuild:
        return torch.load(path, weights_only=True)
    require_tools()
    data = _generate(seed)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".splits.", suffix=".tmp", delete=False) as handle:
        tmp = Path(handle.name)
    try:
        torch.save(data, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    (folder / "info.json").write_text(json.dumps({
        "synthetic": True, "generator": "espeak-ng + sox resample + numpy white noise", "seed": seed,
        "commands": COMMANDS, "voices": VOICES, "speeds": SPEEDS, "pitches": PITCHES, "snrs_db": SNRS_DB,
        "splits": {k: len(v) for k, v in data.items()}}, indent=1))
    return data


__all__ = ["COMMANDS", "add_noise", "read_wav", "speech_commands_synth", "split_settings", "synthesise"]
