"""Peak memory and time of the chunked KD loss against the naive full-logits loss.

Both compute the same loss (alpha * CE + (1 - alpha) * T^2 * forward KL, online teacher) and
its gradients with respect to the student's hidden states and LM head, for `tokens` tokens at
each vocabulary size. The naive loss builds the [tokens, vocab] student and teacher logits;
the chunked one (kdist.train.losses.chunked_kd_loss) walks the LM head in chunks.

Memory is the peak resident memory of a fresh process above what it held just before the loss
ran (inputs, weights and gradient buffers of the inputs are in the baseline for both): each
measurement runs in its own subprocess (glibc's mmap threshold fixed at 1 MiB, so freed big
tensors leave RSS as they would leave a GPU allocator's live set), with the peak counter reset through
/proc/self/clear_refs. Time is the median of `--repeats` forward+backward passes, both
variants alternating in one process (the machine may be shared: load hits both alike).

The naive loss at a 128k vocabulary and 4,096 tokens needs about 15 GiB. On a small shared
machine, when that does not fit in half the available memory, the naive case is measured at
fewer tokens and scaled linearly (every big tensor of the naive loss is [tokens, vocab]); the
output says so ("naive_scaled_from_tokens").

Usage: python benchmarks/kd_loss_memory.py [--tokens 4096] [--vocabs 32000 128256]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def make_step(variant: str, vocab: int, tokens: int, hidden: int, chunk: int | None):
    """A closure doing one forward+backward of the loss, inputs allocated up front."""
    import torch

    from kdist.train.losses import KDParams, OnlineTeacher, chunked_kd_loss, kd_loss

    torch.manual_seed(0)
    h = torch.randn(tokens, hidden, requires_grad=True)
    w = (torch.randn(vocab, hidden) * 0.02).requires_grad_()
    th = torch.randn(tokens, hidden)
    tw = torch.randn(vocab, hidden) * 0.02
    labels = torch.randint(0, vocab, (tokens,))
    params = KDParams(alpha=0.5, temperature=2.0, divergence="forward_kl")
    h.grad = torch.zeros_like(h)  # gradient buffers belong to the baseline, for both
    w.grad = torch.zeros_like(w)

    def step() -> float:
        if variant == "naive":
            with torch.no_grad():
                teacher_logits = th @ tw.T
            loss = kd_loss(h @ w.T, labels, teacher_logits, params, tokens).loss
        else:
            loss = chunked_kd_loss(h, w, labels, OnlineTeacher(th, tw), params, tokens,
                                   chunk_size=chunk).loss
        loss.backward()
        return loss.item()

    return step


def measure_memory(variant, vocab, tokens, hidden, chunk) -> dict:
    make_step(variant, vocab, 8, hidden, chunk)()  # load kernels before the baseline
    step = make_step(variant, vocab, tokens, hidden, chunk)
    Path("/proc/self/clear_refs").write_text("5")
    base = _rss_kib("VmRSS")
    loss = step()
    return {"peak_mib": (_rss_kib("VmHWM") - base) / 1024, "loss": loss}


def measure_time(vocab, tokens, hidden, chunk, repeats) -> dict:
    """Both variants alternately in one process, so load from others hits them alike."""
    steps = {v: make_step(v, vocab, tokens, hidden, chunk) for v in ("naive", "chunked")}
    times: dict[str, list[float]] = {v: [] for v in steps}
    for v, step in steps.items():
        step()  # warm-up
    for _ in range(repeats):
        for v, step in steps.items():
            start = time.perf_counter()
            step()
            times[v].append(time.perf_counter() - start)
    return {v: statistics.median(t) for v, t in times.items()}


def run_child(mode, vocab, tokens, args):
    cmd = [sys.executable, __file__, "--child", mode, "--vocabs", str(vocab), "--tokens",
           str(tokens), "--hidden", str(args.hidden), "--repeats", str(args.repeats),
           "--threads", str(args.threads)]
    if args.chunk_size:
        cmd += ["--chunk-size", str(args.chunk_size)]
    # A fixed mmap threshold: glibc's default one adapts upward (to 32 MiB) and then keeps
    # freed big blocks in the heap, so RSS would count memory the loss already gave back.
    # (Memory runs only: it makes big allocations slow, so timing runs keep the default.)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)} if mode != "time" else None
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--vocabs", type=int, nargs="+", default=[32000, 128256])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--child", choices=["naive", "chunked", "time"])
    args = parser.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        vocab = args.vocabs[0]
        if args.child == "time":
            result = measure_time(vocab, args.tokens, args.hidden, args.chunk_size, args.repeats)
        else:
            result = measure_memory(args.child, vocab, args.tokens, args.hidden, args.chunk_size)
        print(json.dumps(result))
        return

    figures: dict[str, float | int] = {}
    for vocab in args.vocabs:
        # naive bytes ~ 8 x [tokens, vocab] fp32 tensors at the peak (measured about 7)
        naive_need_mib = 8 * args.tokens * vocab * 4 / 2**20
        naive_tokens = args.tokens
        while naive_need_mib * naive_tokens / args.tokens > available_mib() / 2:
            naive_tokens //= 2
        scale = args.tokens / naive_tokens
        naive = run_child("naive", vocab, naive_tokens, args)
        chunked = run_child("chunked", vocab, args.tokens, args)
        # timing at the token count the naive loss fits at: the ratio compares like with like
        times = run_child("time", vocab, naive_tokens, args)
        key = f"v{vocab // 1000}k"
        figures[f"{key}_naive_peak_mib"] = round(naive["peak_mib"] * scale, 1)
        figures[f"{key}_chunked_peak_mib"] = round(chunked["peak_mib"], 1)
        figures[f"{key}_peak_ratio"] = round(chunked["peak_mib"] / (naive["peak_mib"] * scale), 4)
        figures[f"{key}_naive_s"] = round(times["naive"], 3)
        figures[f"{key}_chunked_s"] = round(times["chunked"], 3)
        figures[f"{key}_time_ratio"] = round(times["chunked"] / times["naive"], 3)
        figures[f"{key}_time_tokens"] = naive_tokens
        if scale != 1:
            figures[f"{key}_naive_scaled_from_tokens"] = naive_tokens
        print(f"vocab {vocab}: naive {naive} (tokens {naive_tokens}), chunked {chunked}, "
              f"times {times}", file=sys.stderr)
    print(json.dumps({
        "benchmark": "kd_loss_memory",
        "figures": figures,
        "params": {"tokens": args.tokens, "vocabs": args.vocabs, "hidden": args.hidden,
                   "repeats": args.repeats, "chunk_size": args.chunk_size or "auto",
                   "threads": args.threads, "loss": "alpha=0.5 CE + T=2 forward KL, online",
                   "machine": f"{platform.machine()} {os.cpu_count()} cores, CPU, "
                              f"torch {__import__('torch').__version__}"},
    }))


if __name__ == "__main__":
    main()
