#!/usr/bin/env bash
# BERT-large SQuAD v1.1 fine-tuning, bf16, 2 servers x 8 GPUs. Run on the first server.
set -euo pipefail
export MULTI_HLS_IPS="${MULTI_HLS_IPS:-192.10.100.174,10.10.100.101}"
export DOCKER_SSHD_PORT="${DOCKER_SSHD_PORT:-3022}"
mkdir -p ~/hlogs
demo_bert -c finetuning -m large -d bf16 -t squad -v 8 \
    --epochs 2 --batch_size 24 --max_seq_length 384 --learning_rate 3e-5 \
    --dataset_path /software/data/tf/data/bert/SQuAD --output_dir /root/tmp/bert_large_squad \
    2>&1 | tee ~/hlogs/bert_large_finetuning_bf16_squad_16_cards.txt
