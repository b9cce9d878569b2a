"""The exact `bertkit pretrain` / `bertkit finetune` command lines of a plan's steps (the seed's
run_pretraining.py, run_classifier.py and run_squad.py flags)."""

from __future__ import annotations

from bertkit.launcher.recipes import SQUAD_DOC_STRIDE, Finetune, Phase


def num(x: float) -> str:
    return f"{x:.10g}"


def pretrain_argv(phase: Phase, input_files_dir: str, output_dir: str, bert_config: str, data_type: str,
                  save_steps: int, seed: int, device: str = "auto", init_checkpoint: str | None = None,
                  eval_files_dir: str | None = None, bf16_config_path: str | None = None,
                  overwrite: bool = False) -> list[str]:
    """`bertkit pretrain ...` for one phase (the seed's run_pretraining.py flags)."""
    argv = ["pretrain", "--input_files_dir", input_files_dir, "--output_dir", output_dir,
            "--bert_config_file", bert_config, "--train_batch_size", str(phase.batch_size),
            "--max_seq_length", str(phase.max_seq_length),
            "--max_predictions_per_seq", str(phase.max_predictions_per_seq),
            "--num_train_steps", str(phase.steps), "--num_accumulation_steps", str(phase.accumulation),
            "--num_warmup_steps", str(phase.warmup), "--learning_rate", num(phase.learning_rate),
            "--save_checkpoints_steps", str(save_steps), "--allreduce_post_accumulation", "true",
            "--precision", data_type, "--seed", str(seed), "--device", device]
    if init_checkpoint:
        argv += ["--init_checkpoint", init_checkpoint]
    if eval_files_dir:
        argv += ["--do_eval", "true", "--eval_files_dir", eval_files_dir]
    if bf16_config_path:
        argv += ["--bf16_config_path", bf16_config_path]
    if overwrite:
        argv += ["--overwrite", "true"]
    return argv


def finetune_argv(ft: Finetune, data: dict[str, str], model: str, output_dir: str, data_type: str, seed: int,
                  device: str = "auto", bf16_config_path: str | None = None, overwrite: bool = False,
                  extra: list[str] | None = None) -> list[str]:
    """`bertkit finetune mrpc|squad ...` (the seed's run_classifier.py / run_squad.py flags).
    `data`: {"data_dir": ...} for mrpc, {"train_file": ..., "predict_file": ...} for squad."""
    if ft.task == "mrpc":
        argv = ["finetune", "mrpc", "--task_name", "MRPC", "--do_train", "true", "--do_eval", "true",
                "--data_dir", data["data_dir"]]
    else:
        argv = ["finetune", "squad", "--do_train", "true", "--train_file", data["train_file"],
                "--do_predict", "true", "--predict_file", data["predict_file"],
                "--doc_stride", str(SQUAD_DOC_STRIDE)]
    argv += ["--init_checkpoint", model, "--max_seq_length", str(ft.max_seq_length),
             "--train_batch_size", str(ft.batch_size), "--learning_rate", num(ft.learning_rate),
             "--num_train_epochs", num(ft.epochs), "--output_dir", output_dir,
             "--precision", data_type, "--seed", str(seed), "--device", device]
    if bf16_config_path:
        argv += ["--bf16_config_path", bf16_config_path]
    if overwrite:
        argv += ["--overwrite", "true"]
    return argv + list(extra or [])
