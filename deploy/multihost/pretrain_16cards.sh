#!/usr/bin/env bash
# BERT-large pretraining, bf16, 2 servers x 8 GPUs, the seed's bookswiki recipe (global batch
# 65536 then 32768 through gradient accumulation). Run on the first server.
set -euo pipefail
export MULTI_HLS_IPS="${MULTI_HLS_IPS:-192.10.100.174,10.10.100.101}"
export DOCKER_SSHD_PORT="${DOCKER_SSHD_PORT:-3022}"
export MPI_TCP_INCLUDE="${MPI_TCP_INCLUDE:-eno1}"
mkdir -p ~/hlogs
demo_bert -c pretraining -m large -d bf16 -t bookswiki \
    --dataset_path /software/data/tf/data/bert/books_wiki_en_corpus/tfrecord/ \
    --output_dir "$HOME/tmp/bert_large_bookswiki_16cards/" \
    -v 8 2>&1 | tee ~/hlogs/bert_large_pretraining_bf16_bookswiki_16_cards.txt
