#!/usr/bin/env bash
# Phase 1 of BERT-large pretraining under mpirun on 2 servers x 8 GPUs, calling `bertkit pretrain`
# (run_pretraining.py's flags) directly. bertkit reads its rank from OpenMPI's environment and meets
# the other ranks at MASTER_ADDR:MASTER_PORT (rank 0's server). The learning rate is the effective
# peak rate (bertkit does not multiply it by the number of workers as the seed's script did):
# 6e-3 for a global batch of 65536 = 32 x 128 accumulation x 16 workers.
set -euo pipefail
HOSTS="${HOSTS:-192.10.100.174:8,10.10.100.101:8}"
MASTER_ADDR="${HOSTS%%:*}"
mpirun --allow-run-as-root --mca plm_rsh_args -p3022 --bind-to none -np 16 -H "$HOSTS" \
       --tag-output --merge-stderr-to-stdout \
       -x MASTER_ADDR="$MASTER_ADDR" -x MASTER_PORT=29500 -x PATH -x LD_LIBRARY_PATH \
    bertkit pretrain \
       --input_files_dir=seq_len_128/books_wiki_en_corpus/training \
       --eval_files_dir=seq_len_128/books_wiki_en_corpus/test \
       --output_dir=/root/tmp/pretraining/phase_1 \
       --bert_config_file=large --do_train=True --do_eval=False \
       --train_batch_size=32 --eval_batch_size=8 --max_seq_length=128 --max_predictions_per_seq=20 \
       --num_train_steps=7038 --num_accumulation_steps=128 --num_warmup_steps=2000 \
       --save_checkpoints_steps=100 --learning_rate=6e-3 --precision=bf16 \
       --allreduce_post_accumulation=True
