"""The Markdown report of `benchmarks/engines/engines.py`: its classification and generation tables from the results dict."""

from __future__ import annotations

from typing import Any


def _cell(value: Any, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def markdown(out: dict[str, Any]) -> str:
    header = (f"{out['model']} on {out['data']}: a 20-token prefix prompt ({out['prompt']}), {out['rows']} test rows "
              f"in batches of {out['batch']}, {out['latency_rounds']} batch-1 rounds, engines in turn, "
              f"{out['threads']} threads each; "
              f"{out['cpu']}; {out['date']}. Reference for scores and speed: torch (softprompt) bf16 (fp32 for the "
              f"second Δ column).")
    if out["onnx_export_seconds"] is not None:
        header += (f" ONNX export {out['onnx_export_seconds']:.0f} s (shared by onnxruntime and openvino, not in their "
                   f"setup).")
    lines = [header, "",
             ("| engine | precision | batch-1 ms | rows/s at 8 | × torch bf16 (1 / 8) | max \\|Δ log-prob\\| "
              "| (vs fp32) | same class % | accuracy | setup/compile s | note |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in out["classification"]:
        if "batch1_ms" not in r:
            lines.append(f"| {r['engine']} | {r['precision']} |" + " — |" * 8 + f" {r['note']} |")
            continue
        lines.append(f"| {r['engine']} | {r['precision']} | {r['batch1_ms']:.1f} | {r['rows_per_second_8']:.1f} | "
                     f"{r['speedup_1']:.2f}× / {r['speedup_8']:.2f}× | {r['max_abs_diff']:.4f} | "
                     f"{_cell(r['max_abs_diff_vs_fp32'], '.4f')} | "
                     f"{100 * r['same_class']:.1f} | {100 * r['accuracy']:.1f}% | {r['setup_seconds']:.1f} | "
                     f"{r['note']} |")
    generation = (f"Greedy generation, one row, up to {out['new_tokens']} new tokens (stops at end of sequence), "
                  f"median of {out['generation_rounds']} rounds; tokens/s = new tokens / whole call (prefill "
                  f"included).")
    lines += ["", generation, "",
              "| engine | precision | new tokens | s | tokens/s | × torch bf16 | same text as torch bf16 | note |",
              "|---|---|---|---|---|---|---|---|"]
    for r in out["generation"]:
        if "seconds" not in r:
            lines.append(f"| {r['engine']} | {r['precision']} | — | — | — | — | — | {r['note']} |")
            continue
        lines.append(f"| {r['engine']} | {r['precision']} | {r['new_tokens']} | {r['seconds']:.2f} | "
                     f"{r['tokens_per_second']:.1f} | {r['speedup']:.2f}× | "
                     f"{'yes' if r['same_text_as_torch_bf16'] else 'no'} | {r['note']} |")
    return "\n".join(lines) + "\n"
