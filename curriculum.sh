#!/usr/bin/env bash
# The whole BRIDGE curriculum as one run: base -> stage 1 -> stage 2 -> stage 3, eval.py after each,
# then one table (accuracy, 95% interval, mean generated tokens, seconds) in RUN/results.{json,md}.
# Every command is echoed before it runs, so you can copy them and run them one by one.
#
#   bash curriculum.sh tiny                # the tiny world on a laptop CPU, no downloads (runs/tiny)
#   bash curriculum.sh rewards             # the reward lab: stage 2 again from runs/tiny/stage1 with four
#                                          # rewards, one table and plot (runs/tiny/rewards)
#   bash curriculum.sh Qwen/Qwen2.5-3B     # the paper's setting on GSM8K, on a GPU (runs/Qwen2.5-3B)
#
# Environment: RUN (output folder), PRESET (tiny world size: `tiny`, the default, or `test`, the
# test suite's smaller world), TEACHER_DATA (paper mode: `gsm8k`, the default, or a teacher JSONL
# such as runs/teacher/r1.jsonl), GSM8K_TEST (paper mode eval data, default: ../shared's copy if
# present, else the hub), BASELINES (1: also train the paper's two baselines from the base with
# stage 1's and stage 2's budgets, `sft` = plain distillation and `grpo` = GRPO on the plain
# prompt; default 1 for the tiny world, 0 for paper mode), STAGE1_ARGS / STAGE2_ARGS /
# STAGE3_ARGS / EVAL_ARGS / WORLD_ARGS (extra options appended to those commands; WORLD_ARGS="--seed 1"
# builds another tiny world, WORLD_ARGS="--teacher tidy" the control world, whose teacher writes
# shorter than the base), LAB_STEPS (the reward lab's stage-2 steps, default 40), PYTHON (default: python).
set -euo pipefail
cd "$(dirname "$0")"

TARGET=${1:-tiny}
PY=${PYTHON:-python}
# On small virtual machines page faults are slow, and glibc hands big freed blocks straight back
# to the kernel; keeping them makes the CPU runs markedly faster and changes no result.
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-33554432} MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-17179869184}

if [ "$TARGET" = tiny ] || [ "$TARGET" = rewards ]; then
  RUN=${RUN:-runs/tiny}
  if [ "$TARGET" = rewards ] && [ ! -f "$RUN/stage1/config.json" ]; then
    echo "curriculum.sh rewards: $RUN/stage1 has no model; run 'bash curriculum.sh tiny' first (or set RUN)" >&2; exit 2
  fi
  WORLD=$RUN/world
  TEACHER=$WORLD/teacher.jsonl
  TEST=$WORLD/test.jsonl
  BASE=$WORLD/base
  PRESET=${PRESET:-tiny}   # PRESET=test: the test suite's smaller world, a smoke run of every step
  BASELINES=${BASELINES:-1}
  # tiny-world settings (see tiny_world.py and the README): the paper's method (reconstruction
  # only in stage 1, random masks in stage 2, the paper's rewards, KL weight 0.1, temperature
  # 0.7), with short runs, G=8 (more groups with reward spread than the paper's G=2), and stage
  # 2's length budget scaled to the world's steps (world.json "suggested"). The base model was
  # pre-trained on every prompt form these stages use. Where the scripts' defaults are the
  # paper's, the tiny world's own values are passed explicitly: stage 1 full fine-tuning (with the
  # paper's LoRA the student learned far less here, README), 4 epochs, not the paper's 5, to keep
  # the run within 15 minutes (with 1 epoch the last row was 2-13 points lower, README), in
  # micro-batches of 8 (the same step as 16 x 2, less padding); stage 3 mining 2 samples at
  # temperature 0.7; GRPO at a constant learning rate with no warm-up and no weight decay, and
  # 256 new tokens, where the student's longest answers fit (the stage-1 student writes ~90).
  S1="--epochs 4 --batch-size 8 --grad-accum 4 --warmup-steps 5 --lr 3e-4 --lora-rank 0 --save-every 0"
  S2="--words-per-step WPS --group-size 8 --prompts-per-step 8 --max-steps 80 --lr 2e-5 --beta 0.1 --max-new-tokens 256 --save-every 0"
  S2="$S2 --lr-schedule constant --warmup-ratio 0 --weight-decay 0"
  S3="--attempts 2 --mine-temperature 0.7 --mine-batch-size 128 --group-size 8 --prompts-per-step 8 --max-steps 50 --lr 2e-5 --beta 0.1 --max-new-tokens 256 --mine-max-new-tokens 256 --save-every 0"
  S3="$S3 --lr-schedule constant --warmup-ratio 0 --weight-decay 0"
  EV="--batch-size 100 --max-new-tokens 256 --quiet"
else
  RUN=${RUN:-runs/$(basename "$TARGET")}
  TEACHER=${TEACHER_DATA:-gsm8k}
  SHARED_TEST=../shared/data/gsm8k/test.jsonl
  TEST=${GSM8K_TEST:-$([ -f $SHARED_TEST ] && echo $SHARED_TEST || echo openai/gsm8k)}
  BASE=$TARGET
  BASELINES=${BASELINES:-0}
  # the authors' splits and settings (PAPER.md), all of them the scripts' defaults too, written
  # out so that the echoed commands show them: stage 1 LoRA r=16 on rows 0-1999, 5 epochs;
  # stage 2 on rows 2000-3999, G=2, KL 0.1, 3 epochs; stage 3 on the failures of one greedy
  # attempt among rows 2000+, 5 epochs. Stage 2's --words-per-step is left to the script, which
  # scales the authors' 35 to the teacher data and prints the value it uses.
  ROWS1=0:2000 ROWS2=2000:4000 ROWS3=2000:
  S1="--lora-rank 16 --lora-alpha 32 --lora-dropout 0.05 --lr 5e-5 --weight-decay 0.01 --warmup-steps 80 --epochs 5"
  S1="$S1 --batch-size 4 --grad-accum 8 --max-length 2048 --max-grad-norm 1.0 --seed 42 --dtype bfloat16"
  # (stages 2-3 fine-tune all weights in fp32 beside a frozen reference; gradient checkpointing
  # keeps 3B under 80 GB, see `python benchmarks/gpu_memory.py`)
  # The authors step AdamW once per batch of prompts (G=2 completions each): one prompt in stage 2,
  # 2000 prompts x 3 epochs = 6,000 updates; two in stage 3 (their stage-3 config's
  # train_batch_size 2); with 10% linear warm-up, linear decay and weight decay 0.01. Eight prompts
  # per step would be 750 updates, a different optimisation, so --prompts-per-step 1 and 2 (one
  # GPU; slower, as each rollout batch is one or two groups). Their loss keeps the KL term on every
  # completion, and they step every time, also when a group's rewards are all equal:
  # --keep-zero-variance.
  GRPO="--group-size 2 --temperature 0.7 --top-p 0.9 --lr 1e-5 --beta 0.1 --gradient-checkpointing"
  GRPO="$GRPO --lr-schedule linear --warmup-ratio 0.1 --weight-decay 0.01 --keep-zero-variance"
  S2="$GRPO --prompts-per-step 1 --max-new-tokens 256 --epochs 3"
  S3="$GRPO --prompts-per-step 2 --max-new-tokens 512 --epochs 5 --attempts 1 --mine-temperature 0"
  # every row of the table in one precision: the base is stored in bf16, the stages in fp32
  EV="--batch-size 64 --dtype bfloat16"
fi
mkdir -p "$RUN"
[ "$TARGET" = rewards ] || : > "$RUN/timings.tsv"

# run NAME CMD...: echo the command, run it, append "NAME seconds" to RUN/timings.tsv
run() {
  local name=$1; shift
  echo "+ $*"
  local start=$EPOCHREALTIME
  "$@"
  echo "$name $(awk "BEGIN { print $EPOCHREALTIME - $start }")" >> "$RUN/timings.tsv"
}

evaluate() {  # evaluate STAGE CHECKPOINT
  run "eval_$1" $PY eval.py --model "$2" --data "$TEST" --out "$RUN/eval/$1" $EV ${EVAL_ARGS:-}
}

# 0. the base model (tiny: build the world if it is missing)
if [ "$TARGET" = tiny ] || [ "$TARGET" = rewards ]; then
  [ "$TARGET" = rewards ] || run base $PY tiny_world.py --out "$WORLD" --preset "$PRESET" ${WORLD_ARGS:-}
  # the world's own splits and stage-2 length budget (world.json "suggested", see tiny_world.py)
  read -r ROWS1 ROWS2 ROWS3 WPS < <($PY -c "import json; s = json.load(open('$WORLD/world.json'))['suggested']
print(s['stage1_rows'], s['stage2_rows'], s['stage3_rows'], s['stage2_words_per_step'])")
  S2=${S2/WPS/$WPS}
fi

# the reward lab: stage 2 again from the same stage-1 checkpoint, once per reward, LAB_STEPS steps
# each, everything else as above; one table and plot against the stage-1 row
if [ "$TARGET" = rewards ]; then
  STAGE1=$RUN/stage1 STAGE1_EVAL=$RUN/eval/stage1
  RUN=$RUN/rewards   # the lab's own folder: run and evaluate write its timings.tsv and eval/
  rm -rf "$RUN"; mkdir -p "$RUN/eval"; : > "$RUN/timings.tsv"
  cp -r "$STAGE1_EVAL" "$RUN/eval/stage1"
  S2=${S2/--max-steps 80/--max-steps ${LAB_STEPS:-40}}
  while read -r name reward; do
    run "$name" $PY stage2_grpo.py --model "$STAGE1" --teacher-data "$TEACHER" --rows $ROWS2 --out "$RUN/$name" $S2 $reward --quiet
    evaluate "$name" "$RUN/$name"
  done <<EOF
paper --reward paper
correct --reward correct
paper_tight --reward paper --words-per-step $((WPS / 2))
cosine --reward cosine
EOF
  echo "+ $PY tiny_world.py table $RUN"
  $PY tiny_world.py table "$RUN"
  exit 0
fi

evaluate base "$BASE"
LAST=$BASE

# 1-3. each stage starts from the previous stage's checkpoint
run stage1 $PY stage1_reconstruct.py --model "$LAST" --teacher-data "$TEACHER" --rows $ROWS1 --out "$RUN/stage1" $S1 ${STAGE1_ARGS:-}
LAST=$RUN/stage1; evaluate stage1 "$LAST"
run stage2 $PY stage2_grpo.py --model "$LAST" --teacher-data "$TEACHER" --rows $ROWS2 --out "$RUN/stage2" $S2 ${STAGE2_ARGS:-}
LAST=$RUN/stage2; evaluate stage2 "$LAST"
run stage3 $PY stage3_rewrite.py --model "$LAST" --teacher-data "$TEACHER" --rows $ROWS3 --out "$RUN/stage3" $S3 ${STAGE3_ARGS:-}
LAST=$RUN/stage3; evaluate stage3 "$LAST"

# the paper's comparison: the same budgets spent without the curriculum, from the base model
if [ "$BASELINES" = 1 ]; then
  # standard distillation: stage 1's data, steps and settings, eval prompt -> teacher rationale
  run sft $PY stage1_reconstruct.py --model "$BASE" --teacher-data "$TEACHER" --rows $ROWS1 --out "$RUN/sft" $S1 ${STAGE1_ARGS:-} --task plain
  evaluate sft "$RUN/sft"
  # GRPO alone: stage 2's data, steps, reward and settings, on the plain eval prompt
  run grpo $PY stage2_grpo.py --model "$BASE" --teacher-data "$TEACHER" --rows $ROWS2 --out "$RUN/grpo" $S2 ${STAGE2_ARGS:-} --prompt plain
  evaluate grpo "$RUN/grpo"
fi

echo "+ $PY tiny_world.py table $RUN"
$PY tiny_world.py table "$RUN"
