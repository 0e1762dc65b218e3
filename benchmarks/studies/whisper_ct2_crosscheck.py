"""One-off check (not a test, not a dependency): our converted Whisper tiny.en vs CTranslate2 on the same file.

    pip install --target /tmp/ct2 --no-deps ctranslate2
    PYTHONPATH=src python benchmarks/studies/whisper_ct2_crosscheck.py

Prints the max |difference| of the encoder output and of the decoder logits (teacher-forced on CTranslate2's own
greedy transcript, over the tokens CTranslate2 does not suppress).

Takes ~1 min on 2 CPU cores.
"""
import sys

import numpy as np
import torch

sys.path.insert(0, "/tmp/ct2")
import ctranslate2  # noqa: E402

from softprompt.data.speech import synthesise  # noqa: E402
from softprompt.kinds.speech.backbone import whisper_source_dir, load_whisper_backbone  # noqa: E402

b = load_whisper_backbone()
ct = ctranslate2.models.Whisper(str(whisper_source_dir()), device="cpu", compute_type="float32")
clips = {text: synthesise(text, voice=voice) for text, voice in (
    ("hello world", "en-us+f3"), ("please turn off the lights", "en-us"),
    ("the quick brown fox jumps over the lazy dog", "en-us"))}
feats = b.features(list(clips.values()))
sv = ctranslate2.StorageView.from_array(np.ascontiguousarray(feats.numpy()))
with torch.no_grad():
    ours = b.encode(feats).numpy()
theirs = np.array(ct.encode(sv, to_cpu=True))
print("encoder max abs diff", np.abs(ours - theirs).max(), "max |state|", np.abs(theirs).max())
worst = 0.0
for f, text in enumerate(clips):
    feats1 = feats[f:f + 1]
    sv = ctranslate2.StorageView.from_array(np.ascontiguousarray(feats1.numpy()))
    r = ct.generate(sv, [[50257, 50362]], beam_size=1, max_length=32, return_logits_vocab=True, suppress_tokens=[], suppress_blank=False)[0]
    seq = [50257, 50362] + r.sequences_ids[0]
    theirs = np.stack([np.array(x).reshape(-1) for x in r.logits[0]])
    with torch.no_grad():
        ours = b.decoder_logits(b.embed(torch.tensor([seq])), b.encode(feats1))[0, 1:1 + len(theirs)].numpy()
    ok = np.isfinite(theirs)
    d = np.abs(ours[:, :theirs.shape[1]][ok] - theirs[ok]).max()
    worst = max(worst, d)
    print(repr(text), theirs.shape, "logits max abs diff", d, "max |logit|", np.abs(theirs[ok]).max(), b.tokenizer.decode(r.sequences_ids[0]))
print("decoder logits worst max abs diff", worst)
