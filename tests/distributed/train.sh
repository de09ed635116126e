#!/usr/bin/env bash
# `mpirun -np 2 loom train --distributed` (tools/loom, Note [Distributed loom
# train]) on every model, checked end to end:
#  - the mlp on 2 ranks (DDP, then ZeRO-1) ends where one process with the
#    same global batch ends: `loom eval` of the checkpoints agrees to 1e-3;
#  - rank 0 alone prints (one "epoch 1/1" line);
#  - --resume on 2 ranks continues exactly: an interrupted run resumed equals
#    the uninterrupted one (same eval output);
#  - cnn, resnet9, gpt and lstm train a few steps on 2 ranks, with and without --zero.
#   train.sh MPIRUN_AND_FLAGS... -- LOOM_BINARY DATA_DIR WORK_DIR
set -eu
mpirun=()
while [ "$1" != "--" ]; do mpirun+=("$1"); shift; done
shift
loom=$1 data=$2 work=$3
rm -rf "$work" && mkdir -p "$work"
np2=("${mpirun[@]}" -np 2 "$loom" train --distributed --threads 1 --timeout 120)
one=("$loom" train --threads 1)
small=(--data-dir "$data" --train-limit 1024 --test-limit 200 --batch-size 64 --schedule constant)
fail() { echo "FAIL: $*"; exit 1; }
eval_line() { "$loom" eval --model-file "$1" --data-dir "$data" --threads 1 | grep "test loss"; }
loss_of() { sed -E 's/.*test loss ([0-9.]+).*/\1/' <<<"$1"; }
close() { awk -v a="$1" -v b="$2" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d < 1e-3) }'; }

"${one[@]}" --model mlp "${small[@]}" --epochs 1 --out "$work/one.ckpt" >"$work/one.log"
for mode in ddp zero; do
  extra=(); [ $mode = zero ] && extra=(--zero)
  "${np2[@]}" --model mlp "${small[@]}" --epochs 1 "${extra[@]}" --out "$work/$mode.ckpt" >"$work/$mode.log" 2>&1 \
    || { cat "$work/$mode.log"; fail "mlp --distributed $mode"; }
  [ "$(grep -c '^epoch 1/1: train loss' "$work/$mode.log")" = 1 ] || { cat "$work/$mode.log"; fail "rank 0 alone must print"; }
  a=$(eval_line "$work/one.ckpt"); b=$(eval_line "$work/$mode.ckpt")
  close "$(loss_of "$a")" "$(loss_of "$b")" || fail "mlp $mode on 2 ranks: '$b' vs one process: '$a'"
  echo "ok mlp $mode: 2 ranks '$b', one process '$a'"
done

# Resume on 2 ranks (ZeRO-1: the sharded optimizer state round-trips through the checkpoint).
"${np2[@]}" --model mlp "${small[@]}" --epochs 2 --zero --out "$work/full.ckpt" >/dev/null 2>&1 || fail "2 epochs"
"${np2[@]}" --model mlp "${small[@]}" --epochs 2 --zero --stop-after 1 --out "$work/part.ckpt" >/dev/null 2>&1 \
  || fail "stop after 1"
"${np2[@]}" --model mlp "${small[@]}" --epochs 2 --zero --resume "$work/part.ckpt" --out "$work/part.ckpt" \
  >"$work/resume.log" 2>&1 || { cat "$work/resume.log"; fail "resume"; }
a=$(eval_line "$work/full.ckpt"); b=$(eval_line "$work/part.ckpt")
[ "$a" = "$b" ] || fail "resumed on 2 ranks: '$b', uninterrupted: '$a'"
echo "ok resume: '$b'"

for model in cnn resnet9; do
  "${np2[@]}" --model $model --data-dir "$data" --train-limit 128 --test-limit 64 --batch-size 32 --epochs 1 \
    --out "$work/$model.ckpt" \
    >"$work/$model.log" 2>&1 || { cat "$work/$model.log"; fail "$model"; }
  "${np2[@]}" --model $model --data-dir "$data" --train-limit 128 --test-limit 64 --batch-size 32 --epochs 1 --zero \
    --out "" \
    >"$work/$model-zero.log" 2>&1 || { cat "$work/$model-zero.log"; fail "$model --zero"; }
  echo "ok $model"
done
for model in gpt lstm; do
  lm=(--model $model --layers 1 --d-model 32 --context 16 --batch-size 4 --max-steps 4 --eval-every 2 --eval-batches 1)
  "${np2[@]}" "${lm[@]}" --out "$work/$model.safetensors" >"$work/$model.log" 2>&1 \
    || { cat "$work/$model.log"; fail "$model"; }
  [ "$(grep -c '^step 4/4: train loss' "$work/$model.log")" = 1 ] || { cat "$work/$model.log"; fail "$model: rank 0 alone must print"; }
  "${np2[@]}" "${lm[@]}" --zero --out "" >"$work/$model-zero.log" 2>&1 || { cat "$work/$model-zero.log"; fail "$model --zero"; }
  echo "ok $model"
done
# A global batch that does not split over the ranks is an error on every rank, not a hang.
if "${np2[@]}" --model mlp --data-dir "$data" --train-limit 64 --batch-size 63 --epochs 1 --out "" >"$work/odd.log" 2>&1; then
  fail "--batch-size 63 on 2 ranks was accepted"
fi
grep -q "must split evenly over the 2 ranks" "$work/odd.log" || { cat "$work/odd.log"; fail "odd batch message"; }
echo "ok errors"
