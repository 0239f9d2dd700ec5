"""What every Ray Train worker runs: load, wrap in DeepSpeed, train, check, checkpoint, save.

All ranks take the same decisions at the same steps (stop early, evaluate, checkpoint, save) so
that no rank waits forever in a collective: the stop decision is all-reduced, and evaluation
runs on every rank (under ZeRO-3 a forward pass needs all of them).

One optimizer step = gradient_accumulation_steps micro-batches on every rank. Before the first
of them, the ranks all-reduce how many loss tokens the whole step holds; every micro-batch loss
is its token sum divided by that number, so the step's gradient is the per-token mean over the
effective batch whatever the padding, packing or accumulation (DeepSpeed averages gradients
over ranks, hence the factor world_size at backward, and is told not to divide by the
accumulation steps again).

Memory: every rank writes the peak RSS of each phase (load, setup, steps, validation,
checkpoint, save) above its RSS before the model loaded to <out_dir>/memory/rank<N>.json
(kdist.train.memory); benchmarks/train_memory.py reads them.

On-policy distillation (train.kd.mode on_policy, kdist.train.on_policy): at the start of each
step, before the loss tokens are counted, the student completes a share of the step's rows
itself; the step's record adds generated_tokens, generation_s vs training_s, and the
divergence per token on generated (kd_generated) and on training-set (kd_dataset) tokens.

Checkpoints go through ray.train.report (DeepSpeed's own files, every rank's shard, plus the
step): a restarted worker group (FailureConfig) or a `--resume`d run continues from the latest
one at the exact batch, since each epoch's order is a function of the seed.
"""

from __future__ import annotations

import itertools
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kdist.config import TrainSection

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
DS_TAG = "ds"
MEMORY_DIR = "memory"


@dataclass
class TrainSpec:
    """Everything a worker needs, as plain data (it travels to the workers by pickle)."""

    model_dir: str
    train_path: str  # Parquet of chat rows (kdist.rows.SFT_SCHEMA)
    eval_path: str | None  # same format; accuracy against the last (assistant) turn
    out_dir: str
    train: dict[str, Any]
    seed: int = 0
    label: str = "train"
    # Online logit KD: the teacher's local HF dir (also its tokenizer, for the vocab check).
    teacher_model_dir: str | None = None
    # prompts.parquet, for ground-truth answers (train.kd.ground_truth_mix).
    prompts_path: str | None = None
    resume: bool = False  # continue from the latest checkpoint of an earlier run
    # student.chat_template: used instead of the tokenizer's own (base models have none).
    chat_template: str | None = None
    # The task's answers are one-token labels: validation also reports next-token accuracy.
    fast_validation: bool = True

    def section(self) -> TrainSection:
        return TrainSection.model_validate(self.train)


def train_loop_per_worker(spec_dict: dict[str, Any]) -> None:
    import deepspeed
    import ray.train
    import torch

    from kdist.train.deepspeed_config import deepspeed_config
    from kdist.train.memory import PhaseMemory
    from kdist.train.metrics import MetricsWriter
    from kdist.train.objective import DistillationObjective

    spec = TrainSpec(**spec_dict)
    section = spec.section()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(spec.seed)
    memory = PhaseMemory()

    with memory.phase("load"):
        tokenizer, student = _load_student(spec, section)
        side = _load_teacher(spec, section, tokenizer, student)
        _check_heads(student, side.model)
    with memory.phase("setup"):
        objective = DistillationObjective(student, _kd_params(section), side.model,
                                          side.logits_size, section.kd.chunk_size,
                                          side.vocab_map)
        ds_config = deepspeed_config(section)
        data = _train_data(spec, section, tokenizer, side.tokenizer)
        loader, sampler = _loader(data, ds_config["train_micro_batch_size_per_gpu"], spec.seed,
                                  rank, world)
        accumulation = ds_config["gradient_accumulation_steps"]
        steps_per_epoch = len(loader) // accumulation
        if steps_per_epoch == 0:
            raise ValueError(f"{spec.train_path}: too few rows for one optimizer step "
                             f"(batch_size {section.batch_size})")
        val_data = _eval_data(spec, section, tokenizer, side.tokenizer)
        # The fast letter accuracy only where the task's answers are one-token letters
        # (kdist.tasks: fast_validation); other tasks validate by loss alone.
        eval_rows = _eval_rows(spec.eval_path) if spec.fast_validation else []
        trainable = [p for p in objective.parameters() if p.requires_grad]
        engine, _, _, _ = deepspeed.initialize(model=objective, model_parameters=trainable,
                                               config=ds_config)
        state = _restore(engine)
        policy = _on_policy(spec, section, tokenizer, world)
    metrics = MetricsWriter(Path(spec.out_dir), enabled=rank == 0, resume_step=state["step"])
    if rank == 0 and state["step"]:
        print(f"[{spec.label}] resumed from the checkpoint at step {state['step']}", flush=True)
    step, started = state["step"], time.monotonic() - state["elapsed"]
    accuracy, val_loss, done = state.get("accuracy"), None, step >= section.max_steps
    checkpoint_every = section.checkpoint_every or section.eval_every
    while not done:
        epoch, offset = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch)
        batches = itertools.islice(iter(loader), offset * accumulation,
                                   steps_per_epoch * accumulation)
        for micro_batches in _groups(batches, accumulation):
            with memory.phase("steps"):
                record = _train_step(engine, micro_batches, world, policy, step, rank)
            step += 1
            elapsed = time.monotonic() - started
            record.update(step=step, epoch=epoch, lr=engine.get_lr()[0],
                          seconds=round(elapsed, 2))
            last = step >= section.max_steps
            epoch_end = step % steps_per_epoch == 0
            evaluate = step % section.eval_every == 0 or last
            if evaluate or epoch_end:
                with memory.phase("validation"):
                    val_loss = _validation_loss(engine, val_data, world)
                    record["val_loss"] = val_loss
                    if evaluate:
                        if spec.fast_validation:
                            accuracy = _choice_accuracy(objective.student, tokenizer, eval_rows)
                            record["accuracy"] = accuracy
            metrics.write(record)
            if evaluate and rank == 0:
                shown_acc = f" val_acc {accuracy:.3f}" if accuracy is not None else ""
                print(f"[{spec.label}] step {step}/{section.max_steps} loss {record['loss']:.4f}"
                      f" val_loss {val_loss:.4f}{shown_acc} ({elapsed:.0f}s)",
                      flush=True)
            checkpoint = step % checkpoint_every == 0 and not last
            if evaluate or checkpoint:
                with memory.phase("checkpoint"):
                    _report(engine, record, checkpoint, rank,
                            {"step": step, "elapsed": elapsed, "accuracy": accuracy})
            if evaluate:
                done = last or _all_agree_to_stop(section, accuracy, elapsed)
            if done:
                break
    metrics.close()
    with memory.phase("save"):
        _save(engine, objective, tokenizer, spec, section, accuracy, step, val_loss, rank)
    memory.write(Path(spec.out_dir) / MEMORY_DIR / f"rank{rank}.json")


# --- one optimizer step -----------------------------------------------------------------------


def _train_step(engine, micro_batches: list[dict], world: int, policy=None, step: int = 0,
                rank: int = 0) -> dict[str, float]:
    import torch

    from kdist.train.objective import count_loss_tokens

    record: dict[str, float] = {}
    if policy is not None:  # the student writes its share first, with this step's weights
        micro_batches, record = policy.complete(engine.module.student, micro_batches, step, rank)
    tokens = _all_reduce_sum(torch.tensor([float(sum(count_loss_tokens(b["labels"])
                                                     for b in micro_batches))]))
    num_loss_tokens = max(tokens.item(), 1.0)
    totals = torch.zeros(7)
    step_started = time.monotonic()
    for batch in micro_batches:
        real, slots = batch.pop("real_tokens"), batch.pop("slots")
        generated = batch.get("generated")
        own_tokens = count_loss_tokens(batch["labels"][generated]) if generated is not None else 0
        outputs = engine(**{k: v.to(engine.device) for k, v in batch.items()},
                         num_loss_tokens=num_loss_tokens)
        loss, ce, kd = outputs[:3]
        kd_own = outputs[3].float().cpu() if len(outputs) > 3 else torch.zeros(())
        engine.backward(loss * world, scale_wrt_gas=False)
        engine.step()
        totals += torch.stack([loss.detach().float().cpu(), ce.float().cpu(), kd.float().cpu(),
                               real.float(), slots.float(), kd_own, torch.tensor(own_tokens * 1.0)])
    loss, ce, kd, real, slots, kd_own, own_tokens = _all_reduce_sum(totals).tolist()
    seconds = time.monotonic() - step_started
    record.update({"loss": loss, "ce": ce, "kd": kd, "loss_tokens": int(tokens.item()),
                   "tokens": int(real),  # non-padding tokens of the step, all ranks
                   "tokens_per_s": round(real / max(seconds, 1e-9), 1),
                   "padding_fraction": round(1.0 - real / slots, 4) if slots else 0.0})
    if policy is not None:
        from kdist.train.on_policy import divergence_split

        record["training_s"] = round(seconds, 3)
        record.update(divergence_split(kd, kd_own, num_loss_tokens, own_tokens))
    return record


def _groups(iterable, size: int):
    iterator = iter(iterable)
    while group := list(itertools.islice(iterator, size)):
        if len(group) == size:
            yield group


def _all_reduce_sum(tensor):
    import torch.distributed as dist

    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def _validation_loss(engine, val_data, world: int) -> float:
    """The training objective on the validation rows (every rank runs all of them)."""
    import torch

    from kdist.train.batches import collate
    from kdist.train.objective import count_loss_tokens

    if val_data is None:
        return float("nan")
    batches = [collate(val_data.examples[i : i + 32], val_data)
               for i in range(0, len(val_data.examples), 32)]
    total_tokens = max(sum(count_loss_tokens(b["labels"]) for b in batches), 1)
    engine.eval()
    total = 0.0
    with torch.no_grad():
        for batch in batches:
            batch.pop("real_tokens"), batch.pop("slots")
            loss, _, _ = engine(**{k: v.to(engine.device) for k, v in batch.items()},
                                num_loss_tokens=total_tokens)
            total += loss.float().item()
    engine.train()
    return total


# --- checkpoints ------------------------------------------------------------------------------


def _report(engine, record: dict, checkpoint: bool, rank: int, state: dict) -> None:
    import ray.train

    if not checkpoint:
        ray.train.report(record)
        return
    with tempfile.TemporaryDirectory(prefix="kdist-ckpt-") as tmp:
        # Frozen weights (the base model under LoRA, an online teacher) come from their own
        # directories on restore; only what trains is saved.
        engine.save_checkpoint(tmp, tag=DS_TAG, exclude_frozen_parameters=True)
        if rank == 0:
            (Path(tmp) / STATE_FILE).write_text(json.dumps(state))
        ray.train.report(record, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _restore(engine) -> dict[str, Any]:
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return {"step": 0, "elapsed": 0.0}
    with checkpoint.as_directory() as directory:
        engine.load_checkpoint(directory, tag=DS_TAG, load_module_strict=False)
        return json.loads((Path(directory) / STATE_FILE).read_text())


# --- models -----------------------------------------------------------------------------------


def _torch_dtype(section: TrainSection):
    import torch

    return torch.bfloat16 if section.precision == "bf16" else torch.float32


def _load_student(spec: TrainSpec, section: TrainSection):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec.model_dir)
    if spec.chat_template:  # the config's template wins, and is saved with the model
        tokenizer.chat_template = spec.chat_template
    model = AutoModelForCausalLM.from_pretrained(spec.model_dir, dtype=_torch_dtype(section))
    if section.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if section.method == "lora":
        from kdist.train.lora import apply_lora

        model = apply_lora(model, section.lora)
    return tokenizer, model


@dataclass
class TeacherSide:
    """What the worker holds of the teacher: the frozen online model, how many logits the
    loss compares (shared vocabulary), and across tokenizers its tokenizer and the map of its
    ids onto the student's."""

    model: Any = None
    logits_size: int | None = None
    tokenizer: Any = None  # cross-tokenizer KD only
    vocab_map: Any = None


def _load_teacher(spec: TrainSpec, section: TrainSection, tokenizer, student) -> TeacherSide:
    if section.kd.mode == "sequence":
        return TeacherSide()
    from kdist.train.tokenizers_compat import (check_logit_kd_compatible, hub_tokenizer,
                                               refuse_unchecked_topk)

    student_size = student.get_output_embeddings().weight.shape[0]
    teacher_dir = spec.teacher_model_dir
    if section.kd.teacher_logits == "offline" and section.kd.cross_tokenizer:
        return TeacherSide()  # the stored strings are mapped onto the student's vocabulary
    if section.kd.teacher_logits == "offline":
        teacher_tokenizer = _local_tokenizer(teacher_dir) or hub_tokenizer(teacher_dir)
        if teacher_tokenizer is None:
            refuse_unchecked_topk(teacher_dir)
        check_logit_kd_compatible(teacher_tokenizer, tokenizer, student_size, student_size)
        return TeacherSide()
    if not teacher_dir:
        raise ValueError("train.kd.teacher_logits=online needs a local teacher model dir "
                         "(teacher.model with teacher.kind hf)")
    from transformers import AutoModelForCausalLM

    teacher_tokenizer = _local_tokenizer(teacher_dir)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=_torch_dtype(section))
    teacher_size = teacher.get_output_embeddings().weight.shape[0]
    if section.kd.cross_tokenizer:
        from kdist.train.cross_tokenizer import vocabulary_map

        return TeacherSide(teacher, None, teacher_tokenizer,
                           vocabulary_map(teacher_tokenizer, tokenizer, teacher_size))
    size = check_logit_kd_compatible(teacher_tokenizer, tokenizer, teacher_size, student_size)
    return TeacherSide(teacher, size)


def _on_policy(spec: TrainSpec, section: TrainSection, tokenizer, world: int):
    """The student's sampler for on_policy mode, else None."""
    if section.kd.mode != "on_policy":
        return None
    from kdist.train.on_policy import OnPolicy, Sampling

    settings = section.kd.on_policy
    sampling = Sampling(settings.lmbda, settings.temperature, settings.top_p,
                        settings.max_new_tokens, section.max_seq_len)
    # Under ZeRO-3 every forward is a collective: ranks keep stepping until all are done.
    return OnPolicy(sampling, spec.seed, tokenizer.pad_token_id, tokenizer.eos_token_id,
                    synced=section.zero_stage == 3 and world > 1)


def _check_heads(student, teacher) -> None:
    from kdist.train.objective import check_head_reproduces_logits

    for model in (student, teacher):
        if model is not None:
            check_head_reproduces_logits(model)


def _local_tokenizer(model_dir: str | None):
    if not model_dir or not Path(model_dir).is_dir():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _kd_params(section: TrainSection):
    from kdist.train.losses import KDParams

    kd = section.kd
    if kd.mode == "sequence":
        return KDParams(alpha=1.0)
    # on_policy's alpha is 0 (kdist.config): the divergence alone, on every completion token.
    return KDParams(alpha=kd.alpha, temperature=kd.temperature, divergence=kd.divergence,
                    beta=kd.beta, tail=kd.topk_tail, cross=kd.cross_tokenizer)


# --- data -------------------------------------------------------------------------------------


def _read_rows(path: str) -> list[dict[str, Any]]:
    """The rows in id order: Ray Data writes them in whatever order its joins and blocks
    finished, and the sampler's seeded shuffle is of positions, so without a stable order the
    same seed would train on other batches in every run."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return (table.sort_by("id") if "id" in table.column_names else table).to_pylist()


def _train_data(spec: TrainSpec, section: TrainSection, tokenizer, teacher_tokenizer=None):
    from kdist.train.batches import (build_examples, build_pair_examples,
                                     build_stored_cross_examples, prepare)

    rows = _read_rows(spec.train_path)
    offline = section.kd.mode == "logit" and section.kd.teacher_logits == "offline"
    if section.kd.cross_tokenizer and offline:
        examples, k, missing = build_stored_cross_examples(rows, tokenizer, section.max_seq_len,
                                                           section.kd.cross_tokenizer)
        _check_stored_strings(spec, k, missing, len(rows))
        return prepare(examples, tokenizer.pad_token_id, k, packing=False, seq_len=0)
    if section.kd.cross_tokenizer:  # each row in both tokenizations (config: no packing)
        return build_pair_examples(rows, tokenizer, teacher_tokenizer, section.max_seq_len,
                                   log_summary=True)
    ground_truth = _ground_truth(spec.prompts_path) if section.kd.ground_truth_mix else None
    examples, k, missing = build_examples(rows, tokenizer, section.max_seq_len, topk=offline,
                                          ground_truth=ground_truth,
                                          ground_truth_mix=section.kd.ground_truth_mix,
                                          seed=spec.seed)
    if offline:
        _check_offline_topk(spec, k, missing, len(rows), tokenizer)
    return prepare(examples, tokenizer.pad_token_id, k, section.packing, section.max_seq_len)


def _check_offline_topk(spec: TrainSpec, k: int, missing: int, rows: int, tokenizer) -> None:
    if k == 0:
        raise ValueError(f"{spec.train_path}: train.kd.teacher_logits=offline needs the "
                         "teacher's top-k logprobs; set teacher.sampling.top_logprobs and rerun "
                         "generate, or use train.kd.teacher_logits=online")
    if missing:
        log.warning("offline logit KD: %d of %d rows have no top-k; they train on CE only",
                    missing, rows)


def _check_stored_strings(spec: TrainSpec, k: int, missing: int, rows: int) -> None:
    if k == 0:
        from kdist.train.tokenizers_compat import NO_STORED_STRINGS

        raise ValueError(f"{spec.train_path}: no row's top-k lines up with the student's tokens; "
                         f"{NO_STORED_STRINGS}")
    if missing:
        log.warning("offline cross-tokenizer KD: %d of %d rows have no top-k aligned with the "
                    "student's tokens; they train on CE only", missing, rows)


def _ground_truth(prompts_path: str | None) -> dict[str, str]:
    if not prompts_path:
        raise ValueError("train.kd.ground_truth_mix needs the prompts (run prepare first)")
    import pyarrow.parquet as pq

    rows = pq.read_table(prompts_path, columns=["id", "reference"]).to_pylist()
    return {r["id"]: r["reference"] for r in rows if r["reference"]}


def _eval_data(spec: TrainSpec, section: TrainSection, tokenizer, teacher_tokenizer=None):
    from kdist.train.batches import (build_examples, build_pair_examples,
                                     build_stored_cross_examples, prepare)

    if not spec.eval_path:
        return None
    offline = section.kd.mode == "logit" and section.kd.teacher_logits == "offline"
    if section.kd.cross_tokenizer and offline:
        examples, k, _ = build_stored_cross_examples(_read_rows(spec.eval_path), tokenizer,
                                                     section.max_seq_len,
                                                     section.kd.cross_tokenizer)
        return prepare(examples, tokenizer.pad_token_id, k, packing=False,
                       seq_len=0) if examples else None
    if section.kd.cross_tokenizer:
        data = build_pair_examples(_read_rows(spec.eval_path), tokenizer, teacher_tokenizer,
                                   section.max_seq_len)
        return data if data.examples else None
    examples, k, _ = build_examples(_read_rows(spec.eval_path), tokenizer, section.max_seq_len,
                                    topk=offline)
    return prepare(examples, tokenizer.pad_token_id, k, packing=False,
                   seq_len=section.max_seq_len) if examples else None


def _loader(data, micro_batch: int, seed: int, rank: int, world: int):
    """Each rank takes its own equal-sized shard (drop_last): all ranks run the same steps."""
    from torch.utils.data import DataLoader, DistributedSampler

    from kdist.train.batches import collate

    sampler = DistributedSampler(data.examples, num_replicas=world, rank=rank, shuffle=True,
                                 seed=seed, drop_last=True)
    loader = DataLoader(data.examples, batch_size=micro_batch, sampler=sampler, drop_last=True,
                        collate_fn=lambda rows: collate(rows, data))
    return loader, sampler


def _eval_rows(eval_path: str | None) -> list[dict[str, Any]]:
    if not eval_path:
        return []
    import pyarrow.parquet as pq

    from kdist.tasks.multiple_choice import LETTERS, parse_choice

    rows = pq.read_table(eval_path, columns=["messages"]).to_pylist()
    references = [parse_choice(r["messages"][-1]["content"], LETTERS) for r in rows]
    # A row whose answer names no letter has nothing to be right about: it is left out, never
    # counted as right for a prediction that names none either.
    return [{"messages": r["messages"][:-1], "reference": ref} for r, ref in zip(rows, references) if ref]


def _choice_accuracy(model, tokenizer, rows) -> float:
    from kdist.train.accuracy import choice_accuracy

    return choice_accuracy(model, tokenizer, rows) if rows else float("nan")


def _all_agree_to_stop(section: TrainSection, accuracy: float, elapsed: float) -> bool:
    import torch
    import torch.distributed as dist

    reached = accuracy is not None and accuracy == accuracy  # neither absent nor NaN
    stop = (section.target_accuracy is not None and reached and accuracy >= section.target_accuracy) or (
        section.max_seconds is not None and elapsed >= section.max_seconds
    )
    flag = torch.tensor([1.0 if stop else 0.0])
    if dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


# --- saving -----------------------------------------------------------------------------------


def _save(engine, objective, tokenizer, spec: TrainSpec, section: TrainSection, accuracy,
          steps: int, val_loss, rank: int) -> None:
    """Rank 0 writes model/ (merged, HF safetensors) and, under LoRA, adapter/ alone. Under
    ZeRO-3 the weights are partitioned: every rank joins the gather first."""
    from kdist import storage

    student = objective.student
    if section.zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()  # collective; full dict on rank 0
        if rank != 0:
            return
        student = _fresh_student(spec, section, state)
    if rank != 0:
        return
    out = Path(spec.out_dir)
    if section.method == "lora":
        from kdist.train.lora import save_adapter_and_merged

        save_adapter_and_merged(student, tokenizer, out)
    else:
        with storage.atomic_dir(out / "model") as tmp:
            student.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
    storage.write_json(str(out / "train_result.json"), {
        "steps": steps, "val_accuracy": accuracy, "val_loss": val_loss,
        "method": section.method, "kd_mode": section.kd.mode})


def _fresh_student(spec: TrainSpec, section: TrainSection, state: dict[str, Any]):
    """A plain (unpartitioned) copy of the student holding the gathered weights."""
    _, student = _load_student(spec, section)
    prefix = "student."
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing, unexpected = student.load_state_dict(weights, strict=False)
    if unexpected or [k for k in missing if "lora_" in k or section.method == "full"]:
        raise RuntimeError(f"ZeRO-3 gather: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return student


def spec_to_dict(spec: TrainSpec) -> dict[str, Any]:
    return asdict(spec)
