"""Ray Train + DeepSpeed on 2 CPU workers, end to end, with tiny models and a few steps.

ZeRO-2 LoRA (merged model == base + adapter), ZeRO-3 full fine-tuning with packing and
gradient accumulation, online and offline (top-k) logit KD, the vocabulary check, and recovery
from a worker killed mid-run.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from kdist.rows import SFT_SCHEMA

pytestmark = pytest.mark.slow

ANSWERS = "ABCDE"


@pytest.fixture(scope="module")
def ray_cluster():
    from kdist.config import validate_config
    from kdist.runtime import ray_session

    config = validate_config({"teacher": {"model": "t"}, "student": {"model": "s"},
                              "runtime": {"num_cpus": 2, "log_to_driver": False}})
    with ray_session(config):
        yield


@pytest.fixture(scope="module")
def teacher_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A bigger model with the same tokenizer as the student (tiny_model_dir)."""
    from transformers import AutoTokenizer

    from kdist import modelkit
    from kdist.config import ModelBuildSection

    out = tmp_path_factory.mktemp("teacher")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    modelkit.build_llama(ModelBuildSection(hidden_size=48, num_layers=2, num_heads=4),
                         tokenizer, out, seed=7)
    return out


def sft_rows(n: int, seed: int, teacher_dir: Path | None = None, k: int = 4) -> pa.Table:
    """Chat rows of the demo task; with teacher_dir, its top-k logprobs on each answer token."""
    from kdist.data import synthetic

    rows = []
    for split, index, q in synthetic.generate({"train": n}, seed):
        rows.append({"id": f"{split}-{index}", "top_logprobs": None, "messages": [
            {"role": "user", "content": q.user_message()},
            {"role": "assistant", "content": q.answer}]})
    if teacher_dir is not None:
        _add_topk(rows, teacher_dir, k)
    return pa.Table.from_pylist(rows, schema=SFT_SCHEMA)


def _add_topk(rows, teacher_dir: Path, k: int) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdist.train.examples import IGNORE_INDEX, tokenize_chat

    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    model = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    for row in rows:
        example = tokenize_chat(tokenizer, row["messages"], 96)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([example.input_ids])).logits[0], -1)
        entries = []
        for pos, label in enumerate(example.labels):
            if label != IGNORE_INDEX:  # the distribution that predicted this token
                values, ids = logp[pos - 1].topk(k)
                entries.append({"token_ids": ids.tolist(), "logprobs": values.tolist()})
        row["top_logprobs"] = entries


def write(table: pa.Table, path: Path) -> str:
    import pyarrow.parquet as pq

    pq.write_table(table, path)
    return str(path)


def spec_for(tmp_path: Path, model_dir: Path, train: dict, rows: pa.Table, val: pa.Table,
             teacher_dir: Path | None = None, **extra):
    from kdist.train.loop import TrainSpec

    base = {"num_workers": 2, "batch_size": 8, "max_steps": 6, "eval_every": 3,
            "learning_rate": 3e-3, "max_seq_len": 96}
    return TrainSpec(model_dir=str(model_dir), train_path=write(rows, tmp_path / "train.parquet"),
                     eval_path=write(val, tmp_path / "val.parquet"), out_dir=str(tmp_path / "out"),
                     train={**base, **train}, seed=0, label="student",
                     teacher_model_dir=str(teacher_dir) if teacher_dir else None, **extra)


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def logits_of(model, tokenizer) -> torch.Tensor:
    ids = tokenizer("Which item is a fruit? A) dog B) apple", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(ids).logits


def test_zero2_lora_merged_equals_adapter(ray_cluster, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdist.train.trainer import run_training

    spec = spec_for(tmp_path, tiny_model_dir,
                    {"method": "lora", "zero_stage": 2, "lora": {"r": 4, "alpha": 8}},
                    sft_rows(64, 1), sft_rows(16, 2))
    with Listeners() as listeners:
        result = run_training(spec)
    out = Path(spec.out_dir)
    assert result["steps"] == 6 and result["method"] == "lora"
    # A local run: the workers' rendezvous (rank 0's store, gloo) listens on loopback only.
    assert listeners.seen, "no listening socket of a training worker was seen: the check saw nothing"
    beyond = {ip: pids for ip, pids in listeners.seen.items() if not is_loopback(ip)}
    assert not beyond, f"training workers listen beyond loopback: {beyond} (all seen: {listeners.seen})"
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "ce", "lr", "tokens_per_s", "padding_fraction", "loss_tokens"):
        assert all(key in m for m in metrics), key
    assert "val_loss" in metrics[2] and "accuracy" in metrics[5]
    assert metrics[0]["lr"] < metrics[-1]["lr"]  # warmup
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    # merged model (plain HF dir) == base + adapter, and training changed something
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    merged = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    before = logits_of(base, tokenizer)
    adapted = PeftModel.from_pretrained(base, out / "adapter").eval()
    torch.testing.assert_close(logits_of(merged, tokenizer), logits_of(adapted, tokenizer),
                               atol=1e-5, rtol=1e-4)
    assert not torch.allclose(before, logits_of(merged, tokenizer), atol=1e-4)


def test_zero3_accumulation_and_checkpointing_give_the_update_of_one_big_micro_batch(
        ray_cluster, tiny_model_dir, tmp_path):
    """Gradient accumulation 2 with gradient checkpointing on 2 ZeRO-3 workers takes the
    optimizer steps of an accumulation-1 run on the same tokens, computed here in one process:
    each step's 4 packed rows (both ranks' shards of the seeded sampler) as one micro-batch,
    plain PyTorch AdamW with the same settings. A loss normalised per micro-batch or per rank,
    a gradient dropped, zeroed or not averaged between micro-batches or ranks, or checkpointed
    layers that get no gradient would each give another loss or another update. DeepSpeed's
    WarmupLR runs the first two steps at learning rate 0 (Adam's moments still take their
    gradients), so the third is the first update that moves the weights: compared after it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdist.train.trainer import run_training

    spec = spec_for(tmp_path, tiny_model_dir,
                    {"method": "full", "zero_stage": 3, "packing": True, "max_seq_len": 256,
                     "gradient_accumulation_steps": 2, "batch_size": 4, "max_steps": 3,
                     "eval_every": 3, "lr_schedule": "constant", "gradient_checkpointing": True},
                    sft_rows(96, 3), sft_rows(4, 4))
    result = run_training(spec)
    out = Path(spec.out_dir)
    assert result["steps"] == 3 and result["method"] == "full"
    metrics = read_metrics(out)
    # packed rows of 256 tokens hold ~3 examples each: little padding
    assert all(m["padding_fraction"] < 0.3 for m in metrics)
    lrs = [0.0] + [m["lr"] for m in metrics[:2]]  # each record holds the lr of the next step
    assert lrs == [0.0, 0.0, pytest.approx(1.5e-3)]
    reference, losses, tokens = one_micro_batch_steps(spec, lrs)
    assert [m["loss_tokens"] for m in metrics] == tokens  # the same tokens
    assert [m["loss"] for m in metrics] == pytest.approx(losses, rel=1e-5)
    trained = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    for (name, a), b in zip(trained.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    assert not torch.allclose(logits_of(base, tokenizer), logits_of(trained, tokenizer), atol=1e-4)


def one_micro_batch_steps(spec, lrs: list[float], world: int = 2):
    """The training steps of `spec` in one process without DeepSpeed: each step's rows of every
    rank's sampler shard as one micro-batch, AdamW as DeepSpeed is configured (betas 0.9/0.98,
    no weight decay, gradients clipped to norm 1). Returns the model, and per step the loss
    and the loss tokens."""
    from torch.utils.data import DistributedSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdist.train.batches import collate
    from kdist.train.loop import _train_data
    from kdist.train.objective import DistillationObjective, count_loss_tokens

    section = spec.section()
    data = _train_data(spec, section, AutoTokenizer.from_pretrained(spec.model_dir))
    shards = []
    for rank in range(world):
        sampler = DistributedSampler(data.examples, num_replicas=world, rank=rank, shuffle=True,
                                     seed=spec.seed, drop_last=True)
        sampler.set_epoch(0)
        shards.append(list(sampler))
    model = AutoModelForCausalLM.from_pretrained(spec.model_dir, dtype=torch.float32).train()
    objective = DistillationObjective(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0, betas=(0.9, 0.98), weight_decay=0.0)
    per_rank = section.batch_size // world
    losses, tokens = [], []
    for step, lr in enumerate(lrs):
        rows = [data.examples[i] for shard in shards for i in shard[step * per_rank:(step + 1) * per_rank]]
        batch = collate(rows, data)
        batch.pop("real_tokens"), batch.pop("slots")
        count = count_loss_tokens(batch["labels"])
        loss = objective(**batch, num_loss_tokens=count)[0]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        losses.append(loss.item())
        tokens.append(count)
    return model.eval(), losses, tokens


def test_online_logit_kd_under_zero3(ray_cluster, tiny_model_dir, teacher_dir, tmp_path):
    """The frozen teacher sits in the DeepSpeed module: under ZeRO-3 it is partitioned too,
    and both LM heads are gathered for the chunked loss (external parameters)."""
    from kdist.train.trainer import run_training

    rows = sft_rows(8, 5)
    spec = spec_for(tmp_path, tiny_model_dir,
                    {"method": "lora", "zero_stage": 3, "max_steps": 4, "eval_every": 2,
                     "lora": {"r": 4, "alpha": 8, "modules_to_save": ["lm_head"]},
                     "kd": {"mode": "logit", "teacher_logits": "online", "alpha": 0.5,
                            "temperature": 2.0, "divergence": "jsd"}},
                    rows, sft_rows(8, 6), teacher_dir=teacher_dir)
    result = run_training(spec)
    metrics = read_metrics(Path(spec.out_dir))
    assert result["kd_mode"] == "logit" and len(metrics) == 4
    # One global batch of all 8 rows at step 1, and LoRA starts as the identity: the KD term is
    # the JSD of the two models as loaded, computed here in one process on the full vocabulary
    # (a teacher never gathered from its shards, or a student head left partitioned, would not be).
    assert metrics[0]["kd"] == pytest.approx(full_vocab_jsd(tiny_model_dir, teacher_dir, rows, 2.0), rel=1e-4)
    assert metrics[0]["loss"] == pytest.approx(0.5 * metrics[0]["ce"] + 0.5 * 4 * metrics[0]["kd"],
                                               rel=1e-4)


def full_vocab_jsd(student_dir: Path, teacher_dir: Path, rows: pa.Table, temperature: float) -> float:
    """JSD (beta 0.5) of teacher and student next-token distributions at `temperature`,
    averaged over every answer token of `rows`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdist.train.examples import IGNORE_INDEX, tokenize_chat

    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    student = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    total, tokens = 0.0, 0
    for row in rows.to_pylist():
        example = tokenize_chat(tokenizer, row["messages"], 96)
        ids = torch.tensor([example.input_ids])
        with torch.no_grad():
            p = torch.softmax(teacher(ids).logits[0].double() / temperature, -1)
            q = torch.softmax(student(ids).logits[0].double() / temperature, -1)
        m = (p + q) / 2
        for pos, label in enumerate(example.labels):
            if label != IGNORE_INDEX:
                at = pos - 1
                total += float(0.5 * (p[at] * (p[at] / m[at]).log()).sum() + 0.5 * (q[at] * (q[at] / m[at]).log()).sum())
                tokens += 1
    return total / tokens


def topk_bucket_kl(model_dir: Path, rows: pa.Table) -> float:
    """KL(teacher || student) over the stored top-k plus one tail bucket, at T = 1, averaged
    over every answer token of `rows`, with the student as loaded from model_dir: what the
    first step's KD term must be when one batch holds every row."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdist.train.examples import IGNORE_INDEX, tokenize_chat

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    total, tokens = 0.0, 0
    for row in rows.to_pylist():
        example = tokenize_chat(tokenizer, row["messages"], 96)
        with torch.no_grad():
            logq = torch.log_softmax(model(torch.tensor([example.input_ids])).logits[0].double(), -1)
        answer = [pos for pos, label in enumerate(example.labels) if label != IGNORE_INDEX]
        assert len(answer) == len(row["top_logprobs"])
        for pos, stored in zip(answer, row["top_logprobs"]):
            p = torch.tensor(stored["logprobs"], dtype=torch.float64).exp()
            q = logq[pos - 1, stored["token_ids"]].exp()
            p, q = torch.cat([p, (1 - p.sum())[None]]), torch.cat([q, (1 - q.sum())[None]])
            total += float((p * (p.log() - q.log())).sum())
            tokens += 1
    return total / tokens


def test_offline_topk_kd(ray_cluster, tiny_model_dir, teacher_dir, tmp_path):
    """The first step's KD term equals the divergence computed here from the stored top-k
    (one global batch of all 8 rows, so the row order does not matter): top-k shifted by a
    position, a wrong tail or a KD term normalised twice would not."""
    from kdist.train.trainer import run_training

    rows = sft_rows(8, 7, teacher_dir)
    spec = spec_for(tmp_path, tiny_model_dir,
                    {"method": "full", "zero_stage": 2, "max_steps": 4, "eval_every": 2,
                     "kd": {"mode": "logit", "teacher_logits": "offline", "alpha": 0.2, "temperature": 1.0,
                            "divergence": "forward_kl"}},
                    rows, sft_rows(8, 8, teacher_dir), teacher_dir=teacher_dir)
    run_training(spec)
    metrics = read_metrics(Path(spec.out_dir))
    assert len(metrics) == 4 and metrics[0]["loss_tokens"] == sum(len(r) for r in rows["top_logprobs"].to_pylist())
    assert metrics[0]["kd"] == pytest.approx(topk_bucket_kl(tiny_model_dir, rows), rel=1e-4)
    assert metrics[0]["loss"] == pytest.approx(0.2 * metrics[0]["ce"] + 0.8 * metrics[0]["kd"], rel=1e-4)
    assert metrics[-1]["kd"] < metrics[0]["kd"]  # it learns from the teacher


def test_online_kd_refuses_a_different_vocabulary(tiny_model_dir, tmp_path):
    from kdist import modelkit
    from kdist.config import ModelBuildSection
    from kdist.train.tokenizers_compat import VocabularyMismatch
    from kdist.train.trainer import run_training

    other = tmp_path / "other"
    tokenizer = modelkit.train_tokenizer(["completely different words here"] * 20, 300, other)
    modelkit.build_llama(ModelBuildSection(hidden_size=32, num_layers=1, num_heads=4),
                         tokenizer, other)
    spec = spec_for(tmp_path, tiny_model_dir,
                    {"kd": {"mode": "logit", "teacher_logits": "online"}},
                    sft_rows(8, 1), sft_rows(4, 2), teacher_dir=other)
    with pytest.raises(VocabularyMismatch, match="use sequence-level KD instead"):
        run_training(spec)  # before any worker starts: no Ray needed


class Listeners(threading.Thread):
    """While the block runs: every address a Ray Train worker of this test listens on
    (address -> pids), sampled every 0.1 s."""

    def __init__(self):
        super().__init__(daemon=True)
        self.seen: dict[str, set[int]] = {}
        self.done = threading.Event()

    def run(self):
        import psutil

        while not self.done.is_set():
            for proc in _train_workers():
                try:
                    sockets = proc.net_connections(kind="inet")
                except psutil.Error:
                    continue
                for sock in sockets:
                    if sock.status == psutil.CONN_LISTEN:
                        self.seen.setdefault(sock.laddr.ip, set()).add(proc.pid)
            self.done.wait(0.1)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.join(timeout=5)


def is_loopback(ip: str) -> bool:
    import ipaddress

    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return (mapped or address).is_loopback


def _train_workers() -> list:
    """This test's Ray Train workers: descendants of this process (not other sessions')."""
    import psutil

    found = []
    for proc in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_recovers_from_a_killed_worker_and_resumes(ray_cluster, tiny_model_dir, tmp_path):
    from kdist.train.trainer import run_training

    spec = spec_for(tmp_path, tiny_model_dir,
                    {"method": "lora", "zero_stage": 2, "max_steps": 8, "eval_every": 4,
                     "checkpoint_every": 2, "max_failures": 1, "lora": {"r": 4, "alpha": 8}},
                    sft_rows(64, 9), sft_rows(8, 10))
    out = Path(spec.out_dir)
    killed: list[int] = []

    def kill_after_a_checkpoint():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            steps = read_metrics(out) if (out / "metrics.jsonl").exists() else []
            if steps and steps[-1]["step"] >= 3:  # a checkpoint exists at step 2
                workers = _train_workers()
                if workers:
                    victim = max(workers, key=lambda p: p.pid)
                    os.kill(victim.pid, signal.SIGKILL)
                    killed.append(steps[-1]["step"])
            time.sleep(0.2)

    killer = threading.Thread(target=kill_after_a_checkpoint, daemon=True)
    killer.start()
    result = run_training(spec)
    killer.join(timeout=1)
    assert killed, "no worker was killed: the test did not exercise recovery"
    assert result["steps"] == 8
    steps = [m["step"] for m in read_metrics(out)]
    # restarted from the latest checkpoint, redid the steps after it, each logged once
    assert steps == list(range(1, 9))
    assert len(list((out / "ray_train" / "student").glob("checkpoint_*"))) >= 1

    # `kdist train --resume` after the run: a longer run continues from its last checkpoint
    spec.train["max_steps"] = 9
    spec.resume = True
    result = run_training(spec)
    assert result["steps"] == 9
    assert [m["step"] for m in read_metrics(out)] == list(range(1, 10))


def test_fewer_rows_than_a_batch_fails_before_any_worker_starts(tiny_model_dir, tmp_path):
    from kdist.errors import UsageError
    from kdist.train.trainer import run_training

    spec = spec_for(tmp_path, tiny_model_dir, {"batch_size": 16}, sft_rows(10, 1), sft_rows(4, 2))
    with pytest.raises(UsageError, match=r"has 10 rows, fewer than train.batch_size \(16\)"):
        run_training(spec)
    assert not (tmp_path / "out" / "ray_train").exists()


def test_on_policy_distillation_under_zero2(ray_cluster, tiny_model_dir, teacher_dir, tmp_path):
    """The student completes half of each batch itself under DeepSpeed; the teacher scores
    every completion token; the loss is the reverse KL alone (alpha 0, T 1)."""
    from kdist.train.trainer import run_training

    spec = spec_for(tmp_path, tiny_model_dir,
                    {"method": "full", "zero_stage": 2, "max_steps": 3, "eval_every": 3,
                     "kd": {"mode": "on_policy",
                            "on_policy": {"lmbda": 0.5, "max_new_tokens": 4}}},
                    sft_rows(32, 11), sft_rows(8, 12), teacher_dir=teacher_dir)
    result = run_training(spec)
    metrics = read_metrics(Path(spec.out_dir))
    assert result["kd_mode"] == "on_policy" and [m["step"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        # 8 rows a step, 4 sampled (2 per rank), each 1 to 4 tokens
        assert 4 <= m["generated_tokens"] <= 16
        assert m["generation_s"] > 0 and m["training_s"] > 0
        assert m["loss"] == pytest.approx(m["kd"], rel=1e-5)  # the divergence alone
        assert m["kd_generated"] > 0 and m["kd_dataset"] > 0


def student_with_its_own_tokenizer(tmp_path: Path, teacher_dir: Path):
    """A tiny student whose tokenizer (330 tokens) is not the teacher's (600)."""
    from transformers import AutoTokenizer

    from kdist import modelkit
    from kdist.config import ModelBuildSection
    from kdist.data import synthetic

    student_dir = tmp_path / "student"
    corpus = synthetic.vocabulary_text() + [
        q.user_message() for _, _, q in synthetic.generate({"train": 200}, seed=1)]
    tokenizer = modelkit.train_tokenizer(corpus, 330, student_dir)
    modelkit.build_llama(ModelBuildSection(hidden_size=32, num_layers=2, num_heads=4),
                         tokenizer, student_dir)
    assert len(tokenizer) != len(AutoTokenizer.from_pretrained(teacher_dir))
    return student_dir, tokenizer


def test_cross_tokenizer_kd_from_a_teacher_with_another_vocabulary(ray_cluster, teacher_dir,
                                                                   tmp_path):
    """A student with its own locally trained tokenizer learns from the demo-shaped teacher's
    logits through the alignment (align: shared strings plus a tail bucket)."""
    from transformers import AutoModelForCausalLM

    from kdist.train.trainer import run_training

    student_dir, tokenizer = student_with_its_own_tokenizer(tmp_path, teacher_dir)
    spec = spec_for(tmp_path, student_dir,
                    {"method": "full", "zero_stage": 2, "max_steps": 3, "eval_every": 3,
                     "kd": {"mode": "logit", "teacher_logits": "online",
                            "cross_tokenizer": "align", "alpha": 0.5}},
                    sft_rows(32, 13), sft_rows(8, 14), teacher_dir=teacher_dir)
    result = run_training(spec)
    metrics = read_metrics(Path(spec.out_dir))
    assert result["kd_mode"] == "logit" and len(metrics) == 3
    assert all(m["kd"] > 0 for m in metrics)
    assert metrics[-1]["val_loss"] > 0
    trained = AutoModelForCausalLM.from_pretrained(Path(spec.out_dir) / "model").eval()
    base = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    assert not torch.allclose(logits_of(base, tokenizer), logits_of(trained, tokenizer), atol=1e-4)


def test_on_policy_distillation_under_zero3_lora(ray_cluster, tiny_model_dir, teacher_dir,
                                                 tmp_path):
    """Under ZeRO-3 every generated token is a parameter gather on every rank: all ranks
    sample as many rows and generate with synced_gpus, or they would deadlock (~25 s)."""
    from kdist.train.trainer import run_training

    spec = spec_for(tmp_path, tiny_model_dir,
                    {"method": "lora", "zero_stage": 3, "max_steps": 2, "eval_every": 2,
                     "lora": {"r": 4, "alpha": 8, "modules_to_save": ["lm_head"]},
                     "kd": {"mode": "on_policy",
                            "on_policy": {"lmbda": 0.5, "max_new_tokens": 4}}},
                    sft_rows(32, 11), sft_rows(8, 12), teacher_dir=teacher_dir)
    run_training(spec)
    metrics = read_metrics(Path(spec.out_dir))
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(4 <= m["generated_tokens"] <= 16 and m["kd_generated"] > 0 for m in metrics)


# --- offline top-k across tokenizers ----------------------------------------------------------


def worded_rows(n: int, seed: int, teacher_dir: Path, k: int = 4) -> pa.Table:
    """Chat rows answered "B) apple" (words the 330-token student splits, the teacher does not),
    with the teacher's top-k on each answer token as an OpenAI-format server names tokens by
    text (each token's string with its bytes), stored through the generate path's own parser
    (kdist.llm.remote.top_logprobs_from_openai: strings, generated token, character offset)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdist.data import synthetic
    from kdist.llm.remote import top_logprobs_from_openai
    from kdist.train.examples import IGNORE_INDEX, tokenize_chat

    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    model = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()

    def alternative(token_id: int, logprob: float) -> dict:
        text = tokenizer.decode([token_id])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    rows = []
    for split, index, q in synthetic.generate({"train": n}, seed):
        answer = f"{q.answer}) {q.choices['ABCDE'.index(q.answer)]}"
        messages = [{"role": "user", "content": q.user_message()},
                    {"role": "assistant", "content": answer}]
        example = tokenize_chat(tokenizer, messages, 96)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([example.input_ids])).logits[0], -1)
        content = []  # the answer's tokens; a server's content stops before the end of turn
        for pos, label in enumerate(example.labels):
            if label != IGNORE_INDEX and label != tokenizer.eos_token_id:
                values, ids = logp[pos - 1].topk(k)
                content.append({**alternative(label, float(logp[pos - 1, label])),
                                "top_logprobs": [alternative(int(i), float(v))
                                                 for i, v in zip(ids, values)]})
        rows.append({"id": f"{split}-{index}", "messages": messages,
                     "top_logprobs": top_logprobs_from_openai(content, answer)})
    return pa.Table.from_pylist(rows, schema=SFT_SCHEMA)


def stored_cross_kd(student_dir: Path, rows: pa.Table, cross: str) -> tuple[float, int]:
    """(the KD term of one batch of all `rows`, its loss tokens), computed here from the stored
    strings and the student as loaded, at T = 1: a student answer token that starts at the
    character where a stored teacher token starts is compared with that entry; every other
    answer token (split words, the end of turn) adds 0 and counts in the mean.
    align: the stored strings that are one student token, merged per token, plus a tail bucket
    (strings of byte fragments, shown as U+FFFD, go to the tail); forward KL. uld: the n stored probabilities sorted, plus their tail, against the student's
    n largest plus its tail; L1."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdist.train.examples import IGNORE_INDEX, tokenize_chat

    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    model = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    by_text: dict[str, int] = {}  # a byte fragment of a character has no string to share
    for token_id in range(len(tokenizer)):
        if "\ufffd" not in tokenizer.decode([token_id]):
            by_text.setdefault(tokenizer.decode([token_id]), token_id)
    total, tokens, compared = 0.0, 0, 0
    for row in rows.to_pylist():
        example = tokenize_chat(tokenizer, row["messages"], 96)
        with torch.no_grad():
            logq = torch.log_softmax(model(torch.tensor([example.input_ids])).logits[0].double(), -1)
        at_char = {entry["offset"]: entry for entry in row["top_logprobs"]}
        for pos, label in enumerate(example.labels):
            if label == IGNORE_INDEX:
                continue
            tokens += 1
            entry = at_char.get(len(tokenizer.decode(example.input_ids[example.answer_start:pos])))
            if entry is None or label == tokenizer.eos_token_id:
                continue
            compared += 1
            stored = torch.tensor(entry["logprobs"], dtype=torch.float64).exp()
            q = logq[pos - 1].exp()
            if cross == "uld":
                p_t = stored.sort(descending=True).values
                p_s = q.sort(descending=True).values[:len(p_t)]
                total += float((p_t - p_s).abs().sum() + ((1 - p_t.sum()) - (1 - p_s.sum())).abs())
            else:
                merged: dict[int, float] = {}
                for text, p in zip(entry["tokens"], stored.tolist()):
                    if text in by_text:
                        merged[by_text[text]] = merged.get(by_text[text], 0.0) + p
                ids = list(merged)
                p = torch.tensor([merged[i] for i in ids] + [1 - sum(merged.values())],
                                 dtype=torch.float64)
                s = torch.cat([q[ids], (1 - q[ids].sum())[None]])
                total += float((p * (p.log() - s.log())).sum())
    assert compared >= len(rows) * 2  # the letter and ")" at least, in every row
    return total / tokens, tokens


@pytest.mark.parametrize("cross", ["uld", "align"])
def test_offline_topk_kd_across_tokenizers(ray_cluster, teacher_dir, tmp_path, cross):
    """A student with its own tokenizer trains from the teacher's stored top-k strings and
    offsets (no teacher model in training): the first step's KD term (one global batch of all
    8 rows) equals the divergence computed here from the stored rows and the student as loaded;
    entries laid on the wrong student positions, strings mapped to the wrong ids, a wrong tail
    or an unsorted ULD would not."""
    from kdist.train.trainer import run_training

    student_dir, tokenizer = student_with_its_own_tokenizer(tmp_path, teacher_dir)
    rows = worded_rows(8, 15, teacher_dir)
    spec = spec_for(tmp_path, student_dir,
                    {"method": "full", "zero_stage": 2, "max_steps": 2, "eval_every": 2,
                     "kd": {"mode": "logit", "teacher_logits": "offline", "cross_tokenizer": cross,
                            "alpha": 0.2, "temperature": 1.0, "divergence": "forward_kl"}},
                    rows, worded_rows(4, 16, teacher_dir), teacher_dir=teacher_dir)
    result = run_training(spec)
    metrics = read_metrics(Path(spec.out_dir))
    expected, tokens = stored_cross_kd(student_dir, rows, cross)
    assert result["kd_mode"] == "logit" and len(metrics) == 2
    assert metrics[0]["loss_tokens"] == tokens
    assert metrics[0]["kd"] == pytest.approx(expected, rel=1e-4)
    assert metrics[0]["loss"] == pytest.approx(0.2 * metrics[0]["ce"] + 0.8 * metrics[0]["kd"], rel=1e-4)
    # every step has a teacher term, and validation reads the stored strings too
    assert all(m["kd"] > 0 for m in metrics) and metrics[-1]["val_loss"] > 0
