"""The driver side of training: one Ray Train TorchTrainer run over a TrainSpec.

Checkpoints live under <out_dir>/ray_train/<label>. A fresh run clears them; a resumed run
(`kdist train --resume`, TrainSpec.resume) keeps them, and Ray Train hands the latest to the
workers. Within one run, FailureConfig(max_failures) restarts a lost worker group from the
latest checkpoint.

Beside the checkpoints, <out_dir>/ray_train/<label>.run.json records the settings a checkpoint
cannot outlive (run_identity): a resumed run whose settings differ is refused, naming them,
instead of loading LoRA weights of another shape or mixing two students' runs.

Everything checked here is checked before any worker starts, and fails in one line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from kdist.errors import UsageError
from kdist.train.loop import TrainSpec, spec_to_dict, train_loop_per_worker

log = logging.getLogger(__name__)

CHECKPOINTS_KEPT = 2
RUN_FILE_SUFFIX = ".run.json"


def run_training(spec: TrainSpec) -> dict[str, Any]:
    """Train on the Ray cluster this process is attached to; returns train_result.json."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from kdist.train.rendezvous import LoopbackTorchConfig, on_loopback

    section = spec.section()
    check_chat_template(spec)
    check_vocabularies(spec)
    check_enough_rows(spec)
    out = Path(spec.out_dir).resolve()
    storage = out / "ray_train"
    if spec.resume:
        check_resume_compatible(spec, storage)
    else:
        shutil.rmtree(storage / spec.label, ignore_errors=True)
        (out / "metrics.jsonl").unlink(missing_ok=True)
        shutil.rmtree(out / "tensorboard", ignore_errors=True)
        shutil.rmtree(out / "memory", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    write_run_identity(spec, storage)
    (out / "train_result.json").unlink(missing_ok=True)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=spec_to_dict(spec),
        # A local Ray: the workers' rendezvous listens on 127.0.0.1 too (Ray's default binds
        # every interface); a cluster's workers must reach rank 0 from other nodes.
        torch_config=LoopbackTorchConfig() if on_loopback() else None,
        scaling_config=ScalingConfig(
            num_workers=section.num_workers,
            use_gpu=section.use_gpu,
            resources_per_worker=None if section.use_gpu else {"CPU": 1},
        ),
        run_config=RunConfig(
            name=spec.label,
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=section.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
        ),
    )
    log.info("%s: %s, %s KD, on %d workers (ZeRO-%d)%s", spec.label, section.method,
             section.kd.mode, section.num_workers, section.zero_stage,
             " (resuming)" if spec.resume else "")
    trainer.fit()
    return json.loads((out / "train_result.json").read_text())


def check_enough_rows(spec: TrainSpec) -> None:
    """Before any worker starts: fewer rows than one batch can never make an optimizer step
    (the judge's filter may have left fewer than the prompts). Reads the Parquet footer only."""
    from kdist.storage import count_rows

    rows = count_rows(spec.train_path)
    batch_size = spec.section().batch_size
    if rows < batch_size:
        raise UsageError(f"{spec.train_path} has {rows} rows, fewer than train.batch_size "
                         f"({batch_size}); lower train.batch_size or train on more rows")


def check_vocabularies(spec: TrainSpec) -> None:
    """Before any worker starts: logit KD and on-policy KD need teacher and student to share a
    vocabulary (raises VocabularyMismatch, one line) unless train.kd.cross_tokenizer says how
    to bridge them; offline top-k needs a teacher tokenizer to check its ids against (or, across
    tokenizers, stored strings with offsets: check_stored_strings). Reads
    tokenizers and configs only."""
    kd = spec.section().kd
    if kd.mode == "sequence":
        return
    from transformers import AutoConfig, AutoTokenizer

    from kdist.train.tokenizers_compat import (check_logit_kd_compatible, hub_tokenizer,
                                               refuse_unchecked_topk)

    local = bool(spec.teacher_model_dir) and Path(spec.teacher_model_dir).is_dir()
    if kd.teacher_logits == "offline" and kd.cross_tokenizer:
        check_stored_strings(spec.train_path)
        return  # stored strings, mapped onto the student's vocabulary: no teacher tokenizer
    if kd.teacher_logits == "offline":
        if not local and hub_tokenizer(spec.teacher_model_dir) is None:
            refuse_unchecked_topk(spec.teacher_model_dir)
        return  # the workers compare the tokenizers, with the stored k known
    if not local:
        raise UsageError("train.kd.teacher_logits=online needs the teacher as a local model "
                         f"dir (teacher.model is {spec.teacher_model_dir!r})")
    if kd.cross_tokenizer:
        check_cross_tokenizer_teacher(spec)
        return
    check_logit_kd_compatible(
        AutoTokenizer.from_pretrained(spec.teacher_model_dir),
        AutoTokenizer.from_pretrained(spec.model_dir),
        AutoConfig.from_pretrained(spec.teacher_model_dir).vocab_size,
        AutoConfig.from_pretrained(spec.model_dir).vocab_size,
    )


def check_stored_strings(train_path: str) -> None:
    """Offline top-k across tokenizers: some row's top-k must carry the teacher's token strings
    with their offsets (the hf, openai and azure kinds store them; vllm and servers asked for
    token ids store ids only). Reads the top_logprobs column a row group at a time and stops
    at the first one that has them; whether they line up with the student's tokens, the
    workers check."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from kdist import storage
    from kdist.train.tokenizers_compat import refuse_stored_ids_only

    fs, path = storage.filesystem_for(train_path)
    files = storage.list_files(train_path, suffix=".parquet") if storage.is_dir(train_path) else [path]
    for name in files:
        parquet = pq.ParquetFile(fs.open_input_file(name))
        if "top_logprobs" not in parquet.schema_arrow.names:
            continue
        for batch in parquet.iter_batches(columns=["top_logprobs"]):
            entries = pc.list_flatten(batch.column(0))
            names = {f.name for f in entries.type} if pa.types.is_struct(entries.type) else set()
            if {"offset", "tokens"} <= names and pc.sum(
                    pc.is_valid(pc.struct_field(entries, "offset"))).as_py():
                return
    refuse_stored_ids_only(train_path)


def check_cross_tokenizer_teacher(spec: TrainSpec) -> None:
    """The teacher reads every row in its own chat format, with character offsets: it needs a
    chat template and a fast tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec.teacher_model_dir)
    if not tokenizer.chat_template:
        raise UsageError(f"train.kd.cross_tokenizer: the teacher {spec.teacher_model_dir} has no "
                         "chat template to read the training rows with")
    if not tokenizer.is_fast:
        raise UsageError(f"train.kd.cross_tokenizer: the teacher {spec.teacher_model_dir} has no "
                         "fast tokenizer (tokenizer.json), which the character alignment needs")


def check_chat_template(spec: TrainSpec) -> None:
    """Before any worker starts: the student's prompts are built with its chat template, which
    many base checkpoints lack (each worker would fail with a traceback); student.chat_template
    supplies one. Renders one message so that a broken template fails here too."""
    if not Path(spec.model_dir).is_dir():  # a hub id: its tokenizer is fetched by the workers
        return
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec.model_dir)
    if spec.chat_template:
        tokenizer.chat_template = spec.chat_template
    elif not tokenizer.chat_template:
        raise UsageError(f"student.model {spec.model_dir} has no chat template (a base "
                         "model?): set student.chat_template in the config (a Jinja template)")
    try:
        tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                      add_generation_prompt=True)
    except Exception as err:  # jinja2 raises several types; all mean the same to the user
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(f"student chat template of {spec.model_dir} does not render: {first}")


# --- resume -----------------------------------------------------------------------------------


def run_identity(spec: TrainSpec) -> dict[str, Any]:
    """The settings a checkpoint belongs to. Others (learning rate, max_steps, eval_every...)
    may change on resume. num_workers and zero_stage are here because DeepSpeed's optimizer
    shards are per rank and per stage."""
    section = spec.section()
    identity: dict[str, Any] = {
        "student.model": _model_ref(spec.model_dir),
        "student.config": _config_digest(spec.model_dir),
        "train.method": section.method,
        "train.max_seq_len": section.max_seq_len,
        "train.precision": section.precision,
        "train.kd.mode": section.kd.mode,
        "train.kd.teacher_logits": section.kd.teacher_logits,
        "train.kd.cross_tokenizer": section.kd.cross_tokenizer,
        "train.num_workers": section.num_workers,
        "train.zero_stage": section.zero_stage,
    }
    if section.method == "lora":
        lora = section.lora
        identity.update({"train.lora.r": lora.r, "train.lora.alpha": lora.alpha,
                         "train.lora.target_modules": lora.target_modules,
                         "train.lora.modules_to_save": sorted(lora.modules_to_save)})
    if section.kd.mode != "sequence" and section.kd.teacher_logits == "online":
        identity["teacher.model"] = _model_ref(spec.teacher_model_dir)
    return identity


def _model_ref(model: str | None) -> str | None:
    return str(Path(model).resolve()) if model and Path(model).is_dir() else model


def _config_digest(model_dir: str) -> str | None:
    """sha256 of config.json: another architecture rebuilt at the same path is another model."""
    path = Path(model_dir) / "config.json"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None


def run_file(spec: TrainSpec, storage: Path) -> Path:
    return storage / f"{spec.label}{RUN_FILE_SUFFIX}"


def write_run_identity(spec: TrainSpec, storage: Path) -> None:
    from kdist.storage import write_json

    storage.mkdir(parents=True, exist_ok=True)
    write_json(str(run_file(spec, storage)), run_identity(spec))


def check_resume_compatible(spec: TrainSpec, storage: Path) -> None:
    """`--resume`: refuse checkpoints written under settings that differ (one line)."""
    path = run_file(spec, storage)
    if not path.is_file():  # nothing to resume, or a run from before this file existed
        if (storage / spec.label).is_dir():
            log.warning("%s: no %s beside the checkpoints; resuming unchecked", spec.label,
                        path.name)
        return
    stored, current = json.loads(path.read_text()), run_identity(spec)
    changed = [f"{key} ({stored.get(key)!r} -> {current.get(key)!r})"
               for key in sorted(stored.keys() | current.keys())
               if stored.get(key) != current.get(key)]
    if changed:
        raise UsageError(f"--resume: the checkpoints under {storage / spec.label} were written "
                         f"under other settings: {'; '.join(changed)}; restore them, or train "
                         "without --resume to start over")
