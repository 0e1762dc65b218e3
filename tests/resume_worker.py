"""A training run in its own process, for the kill -9 tests (tests/training/test_resume.py).

    python resume_worker.py MODE CONFIG_JSON
MODE `slow`: every loss call sleeps 50 ms, so a kill lands in the middle of training.
MODE `hang-in-write`: the second checkpoint write puts some bytes in its temp file, prints IN_WRITE and hangs,
so a kill lands in the middle of a checkpoint write.
MODE `hang-in-prompt-write`: the same for the second write of prompt.safetensors (the best prompt so far).
MODE `resume-slow`: `resume` the run in CONFIG's output folder, with the `slow` loss.
"""

import json
import sys
import time

import softprompt.training.checkpoint as checkpoint
from softprompt import TrainConfig
from softprompt.kinds.causal_lm.model import PromptedModel
from softprompt.training import train
from softprompt.training.multitask import MultitaskModel

mode, config = sys.argv[1], json.loads(sys.argv[2])
if mode in ("slow", "resume-slow"):
    original_loss = PromptedModel.loss

    def slow_loss(self, batch):
        time.sleep(0.05)
        return original_loss(self, batch)

    PromptedModel.loss = slow_loss
    original_multitask_loss = MultitaskModel.loss

    def slow_multitask_loss(self, batch):
        time.sleep(0.05)
        return original_multitask_loss(self, batch)

    MultitaskModel.loss = slow_multitask_loss
elif mode == "hang-in-write":
    original_save, calls = checkpoint.torch.save, {"n": 0}

    def hanging_save(obj, handle):
        calls["n"] += 1
        if calls["n"] == 2:
            handle.write(b"\x00" * 4096)
            handle.flush()
            print("IN_WRITE", flush=True)
            time.sleep(120)
        return original_save(obj, handle)

    checkpoint.torch.save = hanging_save
elif mode == "hang-in-prompt-write":
    import softprompt.formats as formats

    original_save_file, prompt_calls = formats.save_file, {"n": 0}

    def hanging_save_file(tensors, filename, metadata=None):
        prompt_calls["n"] += 1
        if prompt_calls["n"] == 2:
            with open(filename, "wb") as handle:
                handle.write(b"\x00" * 64)
            print("IN_PROMPT_WRITE", flush=True)
            time.sleep(120)
        return original_save_file(tensors, filename, metadata=metadata)

    formats.save_file = hanging_save_file
if mode == "resume-slow":
    from softprompt.training import resume

    resume(config["output"], progress=False)
else:
    train(TrainConfig(**config), progress=False)
