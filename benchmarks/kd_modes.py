"""Distillation modes at the same budget on the demo's toy task: a ground-truth baseline,
sequence KD, logit KD (online teacher, and offline top-k), on-policy KD and cross-tokenizer KD;
test accuracy and the recovered share of the teacher's gain, mean and spread over seeds.

In one process with plain PyTorch (no Ray, no DeepSpeed: the loss, the objective and the
on-policy sampler are kdist's own), so it runs in a few minutes on 2 cores:

1. train a tokenizer and a teacher on labelled questions (CE, until --teacher-accuracy or
   --teacher-seconds);
2. the teacher answers the unlabelled pool through the `hf` backend the generate stage uses
   (greedy, with its top-k logprobs per answer token, stored as generate stores them); answers
   that do not parse are dropped, as the rule judge and the filter drop them: the training set
   of every KD mode. No ground-truth label reaches a KD student (asserted);
3. per seed, a fresh student (the same base for every mode of that seed) trains --steps steps
   of --batch rows at one constant learning rate in each mode: ground_truth (CE on the labels,
   no teacher: the baseline), sequence (CE on the teacher's answers), logit_online (online
   teacher, alpha 0.5: alpha * CE + (1 - alpha) * T^2 * KL, forward KL, T 1), logit_offline
   (the same loss on the stored top-k), on_policy (lambda --lmbda, reverse KL, alpha 0),
   cross_tokenizer (a student with its own, smaller tokenizer; online teacher, align, alpha
   0.5), cross_tokenizer_uld (the same with uld), cross_tokenizer_offline (align from the
   stored top-k strings and offsets, no teacher model in training);
4. recovered share = (student - base) / (teacher - base), base being that seed's untrained
   student; spread = max - min over the seeds.

    python benchmarks/kd_modes.py [--seeds 3 --steps 800 --batch 64]  # about 20 minutes on 2 cores (15 before the two cross modes were added)

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
from kdist.endpoints import HFEndpoint  # noqa: E402
from kdist.llm.base import ChatRequest  # noqa: E402
from kdist.llm.hf import HFBackend  # noqa: E402
from kdist.tasks.multiple_choice import parse_choice  # noqa: E402
from kdist.train.batches import (TrainData, build_examples, build_pair_examples,  # noqa: E402
                                 build_stored_cross_examples, collate, prepare)
from kdist.train.cross_tokenizer import vocabulary_map  # noqa: E402
from kdist.train.examples import tokenize_chat  # noqa: E402
from kdist.train.losses import KDParams  # noqa: E402
from kdist.train.objective import DistillationObjective, count_loss_tokens  # noqa: E402
from kdist.train.on_policy import Sampling, complete_batch, sampled_count  # noqa: E402

MODES = ("ground_truth", "sequence", "logit_online", "logit_offline", "on_policy", "cross_tokenizer",
         "cross_tokenizer_uld", "cross_tokenizer_offline")
CROSS = {"cross_tokenizer": "align", "cross_tokenizer_uld": "uld", "cross_tokenizer_offline": "align"}
KD_MODES = MODES[1:]  # every mode but the baseline learns from the teacher alone
TOP_K = 20


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


def teacher_rows(teacher, tokenizer, qs, out: Path) -> list[dict]:
    """The generate stage's answers: the saved teacher served by the `hf` backend, greedy,
    with top-k logprobs; rows whose answer does not parse are dropped (rule judge + filter)."""
    teacher.save_pretrained(out)
    tokenizer.save_pretrained(out)
    backend = HFBackend(HFEndpoint(model=str(out), sampling={"temperature": 0.0, "max_tokens": 4,
                                                              "top_logprobs": TOP_K}), device="cpu")
    rows = []
    for i in range(0, len(qs), 100):
        chunk = qs[i:i + 100]
        requests = [ChatRequest(id=str(i + j), messages=chat(q, "")[:1], request_hash=str(i + j))
                    for j, q in enumerate(chunk)]
        for q, answer in zip(chunk, backend.generate(requests)):
            if parse_choice(answer.response) is not None:
                rows.append({"id": answer.id, "messages": chat(q, answer.response),
                             "top_logprobs": answer.top_logprobs, "label": q.answer})
    backend.close()
    return rows


def kd_rows(rows: list[dict]) -> list[dict]:
    """What a KD student gets: prompt, the teacher's answer and top-k, never the label."""
    return [{key: row[key] for key in ("id", "messages", "top_logprobs")} for row in rows]


def teacher_letters(teacher, tokenizer, qs) -> list[str | None]:
    """The teacher's letter for each question from one forward pass (its greedy first token):
    computed apart from the generation, to check the KD rows against."""
    tokenizer.padding_side = "left"
    letters = []
    with torch.no_grad():
        for i in range(0, len(qs), 64):
            prompts = [tokenizer.apply_chat_template(r["messages"], tokenize=False,
                                                     add_generation_prompt=True)
                       for r in eval_rows(qs[i:i + 64])]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            logits = teacher(**enc, logits_to_keep=1).logits[:, -1]
            letters += [parse_choice(t) for t in tokenizer.batch_decode(logits.argmax(-1)[:, None])]
    return letters


def check_no_labels(rows: list[dict], letters: list[str | None], labels: list[str]) -> None:
    """No ground-truth label reaches a KD student: the rows carry no label, and their answers
    are the teacher's letters (its mistakes included), not the labels."""
    assert all(set(row) == {"id", "messages", "top_logprobs"} for row in rows)
    answers = [parse_choice(row["messages"][-1]["content"]) for row in rows]
    as_teacher = sum(a == t for a, t in zip(answers, letters)) / len(rows)
    as_labels = sum(a == y for a, y in zip(answers, labels)) / len(rows)
    assert as_teacher >= 0.99 and (as_labels < as_teacher or as_labels == 1.0), (as_teacher, as_labels)


def run_mode(mode: str, seed: int, ctx: dict, args) -> dict[str, float]:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    rows = [row["messages"] for row in ctx["rows"]]
    if mode in CROSS:
        tokenizer = ctx["other_tokenizer"]
        student = build(tokenizer, ctx["tmp"] / f"student-x-{seed}", args.student_hidden, 2, seed + 1)
        params = KDParams(alpha=0.5, cross=CROSS[mode])
        if mode == "cross_tokenizer_offline":
            examples, k, _ = build_stored_cross_examples(ctx["rows"], tokenizer, 96, "align")
            data = prepare(examples, tokenizer.pad_token_id, k, False, 96)
            objective = DistillationObjective(student, params, None)
        else:
            data = build_pair_examples(ctx["rows"], tokenizer, ctx["tokenizer"], 96)
            objective = DistillationObjective(student, params, ctx["teacher"], vocab_map=vocabulary_map(
                ctx["tokenizer"], tokenizer, ctx["teacher"].get_output_embeddings().weight.shape[0]))
    else:
        tokenizer = ctx["tokenizer"]
        student = build(tokenizer, ctx["tmp"] / f"student-{seed}", args.student_hidden, 2, seed + 1)
        if mode == "ground_truth":
            data = data_of(tokenizer, ctx["labelled"])
        elif mode == "logit_offline":
            examples, k, _ = build_examples(ctx["rows"], tokenizer, 96, topk=True)
            data = prepare(examples, tokenizer.pad_token_id, k, False, 96)
        else:
            data = data_of(tokenizer, rows)
        params = {"ground_truth": KDParams(alpha=1.0), "sequence": KDParams(alpha=1.0),
                  "logit_online": KDParams(alpha=0.5, divergence="forward_kl"),
                  "logit_offline": KDParams(alpha=0.5, divergence="forward_kl"),
                  "on_policy": KDParams(alpha=0.0, divergence="reverse_kl")}[mode]
        online = mode in ("logit_online", "on_policy")
        objective = DistillationObjective(student, params, ctx["teacher"] if online else None)
    base = choice_accuracy(student, tokenizer, ctx["test"])
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr, betas=(0.9, 0.98))
    sampling = Sampling(args.lmbda, 1.0, 1.0, 4, 96)
    generation, loss_tokens = 0.0, 0
    started = time.monotonic()
    for step, batch in enumerate(batches(data, args.batch, rng), 1):
        if mode == "on_policy":
            t0 = time.monotonic()
            batch, _ = complete_batch(student, batch, sampling,
                                      sampled_count(args.batch, args.lmbda, rng), rng,
                                      tokenizer.pad_token_id, tokenizer.eos_token_id, False)
            generation += time.monotonic() - t0
        loss_tokens += count_loss_tokens(batch["labels"])
        _step(objective, optimizer, batch)
        if step >= args.steps:
            break
    seconds = time.monotonic() - started
    accuracy = choice_accuracy(student, tokenizer, ctx["test"])
    gain = ctx["teacher_test"] - base
    return {"accuracy": accuracy, "base": base, "recovered": (accuracy - base) / gain if gain > 0 else None,
            "s_per_step": seconds / args.steps, "generation_share": generation / seconds,
            "loss_tokens": loss_tokens}


def summary(runs: list[dict[str, float]]) -> dict:
    """Mean and spread (max - min) over the seeds of accuracy and of the recovered share."""
    figures: dict = {}
    for key in ("accuracy", "recovered"):
        values = [r[key] for r in runs if r[key] is not None]
        figures[f"{key}_mean"] = round(statistics.mean(values), 4) if values else None
        figures[f"{key}_spread"] = round(max(values) - min(values), 4) if values else None
        figures[f"{key}_per_seed"] = [round(v, 4) for v in values]
    figures.update(
        base_mean=round(statistics.mean(r["base"] for r in runs), 4),
        ms_per_step_mean=round(1000 * statistics.mean(r["s_per_step"] for r in runs), 1),
        generation_share=round(statistics.mean(r["generation_share"] for r in runs), 3),
        loss_tokens_mean=round(statistics.mean(r["loss_tokens"] for r in runs)),
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
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
        answered = teacher_rows(teacher, tokenizer, pool, tmp / "teacher-trained")
        rows = kd_rows(answered)
        kept = [pool[int(row["id"])] for row in rows]
        check_no_labels(rows, teacher_letters(teacher, tokenizer, kept), [q.answer for q in kept])
        test = eval_rows(questions("test", args.test))
        test_teacher = choice_accuracy(teacher, tokenizer, test)
        ctx = {"tmp": tmp, "tokenizer": tokenizer, "other_tokenizer": other, "teacher": teacher,
               "rows": rows, "test": test, "teacher_test": test_teacher,
               # The baseline: the same questions with their labels.
               "labelled": [chat(q, q.answer) for q in kept]}
        wrong = sum(parse_choice(r["messages"][-1]["content"]) != r["label"] for r in answered)
        print(f"teacher: val {teacher_accuracy:.3f} test {test_teacher:.3f} after "
              f"{teacher_steps} steps ({teacher_seconds:.0f}s); {len(rows)} of {len(pool)} pool "
              f"answers kept, {wrong} of them wrong by the labels", flush=True)
        figures: dict[str, dict[str, float]] = {}
        for mode in args.modes.split(","):
            runs = []
            for seed in range(args.seeds):
                result = run_mode(mode, seed, ctx, args)
                print(f"{mode:16s} seed {seed}: accuracy {result['accuracy']:.3f} (base "
                      f"{result['base']:.3f}) {result['s_per_step'] * 1000:.0f} ms/step", flush=True)
                runs.append(result)
            figures[mode] = summary(runs)
        figures["teacher"] = {"test_accuracy": round(test_teacher, 4), "steps": teacher_steps,
                              "pool_kept": len(rows), "pool_wrong": wrong}
    print(json.dumps({"benchmark": "kd_modes", "figures": figures,
                      "params": {**vars(args), "threads": torch.get_num_threads()}}))


if __name__ == "__main__":
    main()
