"""Padding fraction with and without sequence packing on the demo data.

The demo's training rows (synthetic multiple choice, kdist.data.synthetic) are rendered with the
demo tokenizer's chat template (a byte-level BPE trained offline, kdist.modelkit) and the
assistant's answer (one letter), exactly as training tokenizes them. Then:

- without packing: batches of `--batch-size` rows, each padded to its longest row (dynamic
  padding, the usual collator), and padded to the fixed `max_seq_len` (static shapes);
- with packing: best-fit rows of `--seq-len` tokens (kdist.train.packing).

Usage: python benchmarks/packing.py [--rows 2000] [--seq-len 96 512 2048]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdist.data import synthetic  # noqa: E402
from kdist.modelkit import train_tokenizer  # noqa: E402
from kdist.train.examples import tokenize_chat  # noqa: E402
from kdist.train.packing import pack_examples, padding_without_packing  # noqa: E402


def demo_examples(rows: int, max_seq_len: int, vocab_size: int, seed: int):
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = train_tokenizer(synthetic.vocabulary_text(), vocab_size, Path(tmp))
    rng = random.Random(seed)
    examples = []
    for _, _, question in synthetic.generate({"train": rows}, seed):
        answer = question.answer if rng.random() < 0.9 else rng.choice("ABCDE")  # a teacher
        messages = [*question.messages(), {"role": "assistant", "content": answer}]
        examples.append(tokenize_chat(tokenizer, messages, max_seq_len))
    return examples, tokenizer.pad_token_id


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-seq-len", type=int, default=96, help="train.max_seq_len")
    parser.add_argument("--seq-len", type=int, nargs="+", default=[96, 512, 2048])
    parser.add_argument("--vocab-size", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    examples, pad_id = demo_examples(args.rows, args.max_seq_len, args.vocab_size, args.seed)
    lengths = [len(e.input_ids) for e in examples]
    dynamic = padding_without_packing(lengths, args.batch_size, args.max_seq_len)
    static = padding_without_packing(lengths, 1, args.max_seq_len)
    static.total_tokens = len(lengths) * args.max_seq_len
    figures = {
        "mean_tokens_per_row": round(sum(lengths) / len(lengths), 2),
        "min_tokens_per_row": min(lengths),
        "max_tokens_per_row": max(lengths),
        "padding_dynamic_batches": round(dynamic.padding_fraction, 4),
        "padding_fixed_max_seq_len": round(static.padding_fraction, 4),
    }
    for seq_len in args.seq_len:
        packed = pack_examples(examples, seq_len, pad_id)
        figures[f"padding_packed_{seq_len}"] = round(packed.stats.padding_fraction, 4)
        figures[f"rows_packed_{seq_len}"] = packed.stats.rows
    print(json.dumps({"benchmark": "packing", "figures": figures, "params": vars(args)}))


if __name__ == "__main__":
    main()
