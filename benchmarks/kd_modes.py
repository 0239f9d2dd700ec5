"""Distillation modes at the same budget on the demo's toy task: sequence KD, logit KD,
on-policy KD and cross-tokenizer KD; test accuracy and seconds per step, mean over seeds.

In one process with plain PyTorch (no Ray, no DeepSpeed: the loss, the objective and the
on-policy sampler are kdist's own), so it runs in a few minutes on 2 cores:

1. train a tokenizer and a teacher on labelled questions (CE, until --teacher-accuracy or
   --teacher-seconds);
2. the teacher answers the unlabelled pool (its letter): the training set of every mode;
3. per seed, a fresh student trains --steps steps of --batch rows in each mode:
   sequence (CE on the teacher's answers), logit (online teacher, alpha 0.5, forward KL),
   on_policy (lambda --lmbda, reverse KL, alpha 0), cross_tokenizer (a student with its own,
   smaller tokenizer; align, alpha 0.5).

    python benchmarks/kd_modes.py [--seeds 2 --steps 800 --batch 64]  # about 8 minutes on 2 cores

The last line is one JSON object: {"benchmark": "kd_modes", "figures": {...}, "params": {...}}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from kdist import modelkit  # noqa: E402
from kdist.config import ModelBuildSection  # noqa: E402
from kdist.data import synthetic  # noqa: E402
from kdist.train.accuracy import choice_accuracy  # noqa: E402
from kdist.train.batches import TrainData, build_pair_examples, collate  # noqa: E402
from kdist.train.cross_tokenizer import vocabulary_map  # noqa: E402
from kdist.train.examples import tokenize_chat  # noqa: E402
from kdist.train.losses import KDParams  # noqa: E402
from kdist.train.objective import DistillationObjective, count_loss_tokens  # noqa: E402
from kdist.train.on_policy import Sampling, complete_batch, sampled_count  # noqa: E402

MODES = ("sequence", "logit", "on_policy", "cross_tokenizer")


def questions(split: str, n: int, seed: int = 0):
    return [q for _, _, q in synthetic.generate({split: n}, seed)]


def chat(q, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q.user_message()}, {"role": "assistant", "content": answer}]


def eval_rows(qs) -> list[dict]:
    return [{"messages": [{"role": "user", "content": q.user_message()}], "reference": q.answer}
            for q in qs]


def data_of(tokenizer, rows: list[list[dict]]) -> TrainData:
    examples = []
    for messages in rows:
        e = tokenize_chat(tokenizer, messages, 96)
        examples.append({"input_ids": e.input_ids, "labels": e.labels})
    return TrainData(examples, packed=False, pad_id=tokenizer.pad_token_id)


def batches(data: TrainData, batch: int, rng: random.Random):
    while True:
        order = list(range(len(data.examples)))
        rng.shuffle(order)
        for i in range(0, len(order) - batch + 1, batch):
            yield collate([data.examples[j] for j in order[i:i + batch]], data)


def build(tokenizer, out: Path, hidden: int, layers: int, seed: int):
    return modelkit.build_llama(ModelBuildSection(hidden_size=hidden, num_layers=layers,
                                                  num_heads=8, init_std=0.1),
                                tokenizer, out, seed).train()


def train_teacher(tokenizer, out: Path, args) -> tuple[torch.nn.Module, float, int]:
    teacher = build(tokenizer, out, args.teacher_hidden, 3, seed=0)
    data = data_of(tokenizer, [chat(q, q.answer) for q in questions("teacher_train", 4000)])
    val = eval_rows(questions("validation", 200))
    objective = DistillationObjective(teacher)
    optimizer = torch.optim.AdamW(teacher.parameters(), lr=args.lr, betas=(0.9, 0.98))
    started, accuracy, step = time.monotonic(), 0.0, 0
    for step, batch in enumerate(batches(data, 64, random.Random(0)), 1):
        _step(objective, optimizer, batch)
        if step % 50 == 0:
            accuracy = choice_accuracy(teacher, tokenizer, val)
            if accuracy >= args.teacher_accuracy or time.monotonic() - started > args.teacher_seconds:
                break
    return teacher.eval().requires_grad_(False), accuracy, step


def _step(objective, optimizer, batch) -> None:
    batch = {k: v for k, v in batch.items() if k not in ("real_tokens", "slots")}
    n = count_loss_tokens(batch["labels"])
    outputs = objective(**batch, num_loss_tokens=n)
    optimizer.zero_grad()
    outputs[0].backward()
    torch.nn.utils.clip_grad_norm_(objective.student.parameters(), 1.0)
    optimizer.step()


def teacher_answers(teacher, tokenizer, qs) -> list[str]:
    """The teacher's letter for each question (its greedy first token)."""
    from kdist.tasks.multiple_choice import parse_choice

    tokenizer.padding_side = "left"
    answers = []
    with torch.no_grad():
        for i in range(0, len(qs), 64):
            chunk = qs[i:i + 64]
            prompts = [tokenizer.apply_chat_template(r["messages"], tokenize=False,
                                                     add_generation_prompt=True)
                       for r in eval_rows(chunk)]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            logits = teacher(**enc, logits_to_keep=1).logits[:, -1]
            for text in tokenizer.batch_decode(logits.argmax(-1)[:, None]):
                answers.append(parse_choice(text) or "A")
    return answers


def run_mode(mode: str, seed: int, ctx: dict, args) -> dict[str, float]:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    rows = ctx["rows"]
    if mode == "cross_tokenizer":
        tokenizer = ctx["other_tokenizer"]
        student = build(tokenizer, ctx["tmp"] / f"student-x-{seed}", args.student_hidden, 2, seed + 1)
        data = build_pair_examples([{"messages": m} for m in rows], tokenizer,
                                   ctx["tokenizer"], 96)
        params = KDParams(alpha=0.5, cross="align")
        objective = DistillationObjective(student, params, ctx["teacher"], vocab_map=vocabulary_map(
            ctx["tokenizer"], tokenizer, ctx["teacher"].get_output_embeddings().weight.shape[0]))
    else:
        tokenizer = ctx["tokenizer"]
        student = build(tokenizer, ctx["tmp"] / f"student-{seed}", args.student_hidden, 2, seed + 1)
        data = data_of(tokenizer, rows)
        params = {"sequence": KDParams(alpha=1.0),
                  "logit": KDParams(alpha=0.5, divergence="forward_kl"),
                  "on_policy": KDParams(alpha=0.0, divergence="reverse_kl")}[mode]
        objective = DistillationObjective(student, params,
                                          None if mode == "sequence" else ctx["teacher"])
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr, betas=(0.9, 0.98))
    sampling = Sampling(args.lmbda, 1.0, 1.0, 4, 96)
    generation = 0.0
    started = time.monotonic()
    for step, batch in enumerate(batches(data, args.batch, rng), 1):
        if mode == "on_policy":
            t0 = time.monotonic()
            batch, _ = complete_batch(student, batch, sampling,
                                      sampled_count(args.batch, args.lmbda, rng), rng,
                                      tokenizer.pad_token_id, tokenizer.eos_token_id, False)
            generation += time.monotonic() - t0
        _step(objective, optimizer, batch)
        if step >= args.steps:
            break
    seconds = time.monotonic() - started
    accuracy = choice_accuracy(student, tokenizer, ctx["test"])
    return {"accuracy": accuracy, "s_per_step": seconds / args.steps,
            "generation_share": generation / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--lmbda", type=float, default=0.5)
    parser.add_argument("--pool", type=int, default=2000, help="questions the teacher answers")
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--teacher-hidden", type=int, default=96)
    parser.add_argument("--student-hidden", type=int, default=64)
    parser.add_argument("--teacher-accuracy", type=float, default=0.9)
    parser.add_argument("--teacher-seconds", type=float, default=120.0)
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    with tempfile.TemporaryDirectory(prefix="kd-modes-") as tmp:
        tmp = Path(tmp)
        corpus = synthetic.vocabulary_text() + [q.user_message() for q in questions("train", 300)]
        tokenizer = modelkit.train_tokenizer(corpus, 600, tmp / "tokenizer")
        other = modelkit.train_tokenizer(corpus, 330, tmp / "other-tokenizer")  # splits words
        started = time.monotonic()
        teacher, teacher_accuracy, teacher_steps = train_teacher(tokenizer, tmp / "teacher", args)
        teacher_seconds = time.monotonic() - started
        pool = questions("train", args.pool)
        answers = teacher_answers(teacher, tokenizer, pool)
        ctx = {"tmp": tmp, "tokenizer": tokenizer, "other_tokenizer": other, "teacher": teacher,
               "rows": [chat(q, a) for q, a in zip(pool, answers)],
               "test": eval_rows(questions("test", args.test))}
        test_teacher = choice_accuracy(teacher, tokenizer, ctx["test"])
        print(f"teacher: val {teacher_accuracy:.3f} test {test_teacher:.3f} after "
              f"{teacher_steps} steps ({teacher_seconds:.0f}s)", flush=True)
        figures: dict[str, dict[str, float]] = {}
        for mode in args.modes.split(","):
            runs = []
            for seed in range(args.seeds):
                result = run_mode(mode, seed, ctx, args)
                print(f"{mode:16s} seed {seed}: accuracy {result['accuracy']:.3f} "
                      f"{result['s_per_step'] * 1000:.0f} ms/step", flush=True)
                runs.append(result)
            figures[mode] = {
                "accuracy_mean": round(statistics.mean(r["accuracy"] for r in runs), 4),
                "accuracy_per_seed": [round(r["accuracy"], 4) for r in runs],
                "ms_per_step_mean": round(1000 * statistics.mean(r["s_per_step"] for r in runs), 1),
                "generation_share": round(statistics.mean(r["generation_share"] for r in runs), 3),
            }
        figures["teacher"] = {"test_accuracy": round(test_teacher, 4), "steps": teacher_steps}
    print(json.dumps({"benchmark": "kd_modes", "figures": figures,
                      "params": {**vars(args), "threads": torch.get_num_threads()}}))


if __name__ == "__main__":
    main()
