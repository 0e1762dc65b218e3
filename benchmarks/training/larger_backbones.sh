#!/bin/bash
# The Qwen2.5 built-ins end to end on this machine (needs `make install-bench` and GNU time): the first use converts
# each GGUF once; then 3 training steps with gradient checkpointing -> eval -> predict on 0.5B and 1.5B, and
# `softprompt serve` on 1.5B answering /v1/classify. Wall time and peak RSS per command.
#
#   bash benchmarks/training/larger_backbones.sh 2>&1 | tee benchmarks/training/results/larger_backbones.txt
# Takes ~8 min on 2 CPU cores on first use (conversions).
cd "$(dirname "$0")/../.."
SP=.venv/bin/softprompt
OUT=$(mktemp -d)
set -x
for m in qwen2.5-0.5b qwen2.5-1.5b; do
  /usr/bin/time -f "$m train: %e s wall, %M KB peak RSS" $SP train --model $m --data rotten_tomatoes --output $OUT/$m \
    --max-steps 3 --batch-size 4 --eval-every 3 --eval-limit 16 --gradient-checkpointing --compile off --log-every 1 2>&1 | grep -v "^\[20"
  /usr/bin/time -f "$m eval: %e s wall, %M KB peak RSS" $SP eval --prompt $OUT/$m/prompt.safetensors --data rotten_tomatoes --limit 16 --quiet 2>&1
  /usr/bin/time -f "$m predict: %e s wall, %M KB peak RSS" $SP predict --prompt $OUT/$m/prompt.safetensors --json "A three-hour cinema master class." "A tedious, joyless slog." 2>&1
done
mkdir -p $OUT/served && cp $OUT/qwen2.5-1.5b/prompt.safetensors $OUT/served/sentiment.safetensors
$SP serve --model qwen2.5-1.5b --prompts $OUT/served --port 8765 > $OUT/serve.log 2>&1 &
for i in $(seq 1 120); do curl -s localhost:8765/healthz >/dev/null && break; sleep 2; done
time curl -s localhost:8765/v1/classify -H 'content-type: application/json' -d '{"prompt": "sentiment", "inputs": ["A three-hour cinema master class.", "A tedious, joyless slog."]}'
echo
ps -o rss= -p $(pgrep -f "softprompt serve" | head -1)
pkill -f "softprompt serve"
