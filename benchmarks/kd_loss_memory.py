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

With --peers (issue 19; run with .venv-bench's python, `make bench-setup`), two more variants
compute the same loss and gradients and are measured alike:

- liger: Liger-Kernel's chunked fused-linear JSD (liger_kernel.chunked_loss.jsd_loss.
  LigerFusedLinearJSDLoss, its torch.compile'd PyTorch path: the Triton kernel has no CPU
  driver) at beta 0, which is its forward KL(teacher || student); weight_hard_loss = alpha and
  weight_soft_loss = (1 - alpha) T^2, since Liger scales no T^2 itself. Its defaults otherwise
  (1,024 tokens a chunk, compiled); its first pass (compilation) is a warm-up, as a training
  loop's first step would be.
- trl: TRL's generalized JSD (trl.experimental.gkd.gkd_trainer.GKDTrainer.generalized_jsd_loss)
  at beta 0 (also forward KL) on full [tokens, vocab] logits, plus the CE TRL leaves to the
  caller: alpha CE + (1 - alpha) T^2 JSD. (GKDTrainer itself uses the JSD alone, at T = 1.)
  A naive-memory peer: measured at the naive loss's token count, scaled alike.

Before timing, the loss and both gradients of every variant are checked equal to kdist's
chunked loss on the same inputs (rtol 1e-4); a mismatch stops the run. Peer figures:
`<vocab>_<peer>_peak_ratio` (kdist's chunked peak over the peer's: target <= 1) and
`<vocab>_<peer>_speed_ratio` (kdist's throughput over the peer's, i.e. peer s / kdist s:
target >= 1).

With --device cuda (a GPU, where the loss runs in training), every variant runs in one process:
memory is the caching allocator's peak above what was allocated just before the pass (every
variant's inputs are in each baseline alike), time the median of synchronised passes; --dtype
bf16 gives the inputs in bf16 (values then checked at bf16's precision, rtol 2e-2).

Usage: python benchmarks/kd_loss_memory.py [--tokens 4096] [--vocabs 32000 128256] [--peers]
       [--device cuda [--dtype bf16]]
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

import peers  # benchmarks/peers.py: the script's directory is on sys.path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def make_step(variant: str, vocab: int, tokens: int, hidden: int, chunk: int | None,
              device: str = "cpu", dtype: str = "fp32"):
    """A closure doing one forward+backward of the loss, inputs allocated up front (drawn in
    fp32 on the CPU, so every device and dtype sees the same numbers)."""
    import torch

    from kdist.train.losses import KDParams, OnlineTeacher, chunked_kd_loss, kd_loss

    torch.manual_seed(0)
    to = {"device": device, "dtype": getattr(torch, DTYPES[dtype])}
    h = torch.randn(tokens, hidden).to(**to).requires_grad_()
    w = (torch.randn(vocab, hidden) * 0.02).to(**to).requires_grad_()
    th = torch.randn(tokens, hidden).to(**to)
    tw = (torch.randn(vocab, hidden) * 0.02).to(**to)
    labels = torch.randint(0, vocab, (tokens,)).to(device)
    params = KDParams(alpha=0.5, temperature=2.0, divergence="forward_kl")
    h.grad = torch.zeros_like(h)  # gradient buffers belong to the baseline, for both
    w.grad = torch.zeros_like(w)

    loss_fn = _peer_loss(variant, params) if variant in PEERS else None

    def step() -> float:
        if variant == "naive":
            with torch.no_grad():
                teacher_logits = th @ tw.T
            loss = kd_loss(h @ w.T, labels, teacher_logits, params, tokens).loss
        elif variant == "chunked":
            loss = chunked_kd_loss(h, w, labels, OnlineTeacher(th, tw), params, tokens,
                                   chunk_size=chunk).loss
        else:
            loss = loss_fn(h, w, th, tw, labels)
        loss.backward()
        return loss.item()

    step.grads = (h.grad, w.grad)  # accumulated in place by every backward
    return step


PEERS = ("liger", "trl")
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}  # torch attribute names


def _peer_loss(variant: str, params):
    """The peer's loss of (hidden, head, teacher hidden, teacher head, labels), set up to be
    kdist's: alpha CE + (1 - alpha) T^2 forward KL, both libraries' beta = 0 (their code:
    F.kl_div(student_logp, teacher_logp, log_target=True) = KL(teacher || student))."""
    import torch
    import torch.nn.functional as F

    t, alpha = params.temperature, params.alpha
    if variant == "liger":
        from liger_kernel.chunked_loss.jsd_loss import LigerFusedLinearJSDLoss

        # Liger's CE is at T = 1 and its soft term at T without the T^2: put T^2 in the weight.
        return LigerFusedLinearJSDLoss(weight_hard_loss=alpha,
                                       weight_soft_loss=(1 - alpha) * t * t, beta=0.0,
                                       temperature=t)
    from trl.experimental.gkd.gkd_trainer import GKDTrainer

    def trl_loss(h, w, th, tw, labels):
        logits = h @ w.T
        with torch.no_grad():
            teacher_logits = th @ tw.T
        jsd = GKDTrainer.generalized_jsd_loss(logits[None], teacher_logits[None], labels[None],
                                              beta=0.0, temperature=t)
        return alpha * F.cross_entropy(logits, labels) + (1 - alpha) * t * t * jsd

    return trl_loss


def measure_memory(variant, vocab, tokens, hidden, chunk) -> dict:
    make_step(variant, vocab, 8, hidden, chunk)()  # load kernels before the baseline
    step = make_step(variant, vocab, tokens, hidden, chunk)
    if variant == "liger":
        step()  # torch.compile compiles for this shape on the first pass: not the loss's memory
    Path("/proc/self/clear_refs").write_text("5")
    base = _rss_kib("VmRSS")
    loss = step()
    return {"peak_mib": (_rss_kib("VmHWM") - base) / 1024, "loss": loss}


def measure_time(vocab, tokens, hidden, chunk, repeats, variants) -> dict:
    """All variants alternately in one process, so load from others hits them alike."""
    steps = {v: make_step(v, vocab, tokens, hidden, chunk) for v in variants}
    times: dict[str, list[float]] = {v: [] for v in steps}
    losses = {v: step() for v, step in steps.items()}  # warm-up (and Liger's compilation)
    if len(variants) > 2:
        check_equal(steps, losses)
    for _ in range(repeats):
        for v, step in steps.items():
            start = time.perf_counter()
            step()
            times[v].append(time.perf_counter() - start)
    return {**{v: statistics.median(t) for v, t in times.items()},
            "losses": {v: round(x, 6) for v, x in losses.items()}}


def measure_cuda(vocab, tokens, hidden, chunk, repeats, variants, dtype) -> dict:
    """Peak memory and median time of each variant on the GPU (module docstring)."""
    import torch

    steps = {v: make_step(v, vocab, tokens, hidden, chunk, "cuda", dtype) for v in variants}
    losses = {v: step() for v, step in steps.items()}  # warm-up (Liger's compilation, cuBLAS)
    check_equal(steps, losses, rtol=BF16_RTOL if dtype == "bf16" else 1e-4)
    result: dict = {"losses": {v: round(x, 6) for v, x in losses.items()}}
    for v, step in steps.items():
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        result[f"{v}_peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    times: dict[str, list[float]] = {v: [] for v in steps}
    for _ in range(repeats):
        for v, step in steps.items():
            torch.cuda.synchronize()
            start = time.perf_counter()
            step()  # .item() in the step synchronises
            times[v].append(time.perf_counter() - start)
    result.update({f"{v}_s": statistics.median(t) for v, t in times.items()})
    return result


# bf16 inputs: every variant rounds its logits and gradients to bf16 at different points, so
# they agree to bf16's precision (8 bits of mantissa), not fp32's.
BF16_RTOL = 2e-2


def cuda_figures(args, variants) -> dict:
    import torch

    figures: dict = {}
    for vocab in args.vocabs:
        r = measure_cuda(vocab, args.tokens, args.hidden, args.chunk_size, args.repeats,
                         variants, args.dtype)
        key = f"v{vocab // 1000}k"
        for v in variants:
            figures[f"{key}_{v}_peak_mib"] = round(r[f"{v}_peak_mib"], 1)
            figures[f"{key}_{v}_s"] = round(r[f"{v}_s"], 4)
        figures[f"{key}_peak_ratio"] = round(r["chunked_peak_mib"] / r["naive_peak_mib"], 4)
        figures[f"{key}_time_ratio"] = round(r["chunked_s"] / r["naive_s"], 3)
        for peer in (v for v in variants if v in PEERS):
            figures[f"{key}_{peer}_peak_ratio"] = round(r["chunked_peak_mib"]
                                                        / r[f"{peer}_peak_mib"], 4)
            figures[f"{key}_{peer}_speed_ratio"] = round(r[f"{peer}_s"] / r["chunked_s"], 3)
        figures[f"{key}_losses"] = r["losses"]
        print(f"vocab {vocab}: {r}", file=sys.stderr)
        torch.cuda.empty_cache()
    return figures


def check_equal(steps, losses, rtol=1e-4) -> None:
    """Every variant's loss and gradients (after one pass on the same inputs) equal to kdist's
    chunked loss within rtol of its largest magnitude: the timings compare the same quantity."""
    ref_grads = steps["chunked"].grads
    for v, step in steps.items():
        diffs = [abs(losses[v] - losses["chunked"]) / abs(losses["chunked"])]
        diffs += [float((g - r).abs().max() / r.abs().max()) for g, r in zip(step.grads, ref_grads)]
        if not all(d <= rtol for d in diffs):  # NaN (a zero reference) fails too
            raise SystemExit(f"{v}: loss/grad_hidden/grad_head differ from kdist's by {diffs} "
                             f"(relative, > {rtol}): not the same quantity, not timed")


def run_child(mode, vocab, tokens, args):
    cmd = [sys.executable, __file__, "--child", mode, "--vocabs", str(vocab), "--tokens",
           str(tokens), "--hidden", str(args.hidden), "--repeats", str(args.repeats),
           "--threads", str(args.threads)]
    if args.peers:
        cmd.append("--peers")
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
    parser.add_argument("--child", choices=["naive", "chunked", "time", *PEERS])
    parser.add_argument("--peers", action="store_true",
                        help="also Liger-Kernel's and TRL's losses (issue 19; .venv-bench)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: the allocator's peak and synchronised times, one process")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32",
                        help="inputs' dtype (bf16 with --device cuda only)")
    args = parser.parse_args()
    if args.dtype != "fp32" and args.device != "cuda":
        parser.error("--dtype bf16 needs --device cuda (the CPU figures are fp32)")
    if args.device == "cuda" and not __import__("torch").cuda.is_available():
        parser.error("--device cuda: torch sees no GPU here")
    if args.peers:
        peers.require("liger_kernel", "trl")
    variants = ["naive", "chunked", *(PEERS if args.peers else ())]
    if args.device == "cuda":
        print(json.dumps({
            "benchmark": "kd_loss_memory",
            "figures": cuda_figures(args, variants),
            "params": {**common_params(args),
                       "machine": f"{__import__('torch').cuda.get_device_name()}, "
                                  f"{args.dtype}, torch {__import__('torch').__version__}"},
        }))
        return
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        vocab = args.vocabs[0]
        if args.child == "time":
            result = measure_time(vocab, args.tokens, args.hidden, args.chunk_size, args.repeats,
                                  variants)
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
        if args.peers:
            figures.update(peer_figures(key, vocab, naive_tokens, chunked, times, args))
        print(f"vocab {vocab}: naive {naive} (tokens {naive_tokens}), chunked {chunked}, "
              f"times {times}", file=sys.stderr)
    print(json.dumps({
        "benchmark": "kd_loss_memory",
        "figures": figures,
        "params": {**common_params(args), "threads": args.threads,
                   "machine": f"{platform.machine()} {os.cpu_count()} cores, CPU, "
                              f"torch {__import__('torch').__version__}"},
    }))


def common_params(args) -> dict:
    return {"tokens": args.tokens, "vocabs": args.vocabs, "hidden": args.hidden,
            "repeats": args.repeats, "chunk_size": args.chunk_size or "auto",
            "loss": "alpha=0.5 CE + T=2 forward KL, online",
            **({"peers": peers.versions("liger-kernel", "trl", "transformers")}
               if args.peers else {})}


def peer_figures(key, vocab, naive_tokens, chunked, times, args) -> dict:
    """Liger at the full token count (chunked, like kdist's); TRL at the naive loss's (its
    logits are full), scaled alike. Speed ratios at the timing token count, kdist over peer."""
    figures = {}
    for peer in PEERS:
        tokens = args.tokens if peer == "liger" else naive_tokens
        peak = run_child(peer, vocab, tokens, args)["peak_mib"] * args.tokens / tokens
        figures[f"{key}_{peer}_peak_mib"] = round(peak, 1)
        figures[f"{key}_{peer}_peak_ratio"] = round(chunked["peak_mib"] / peak, 4)
        figures[f"{key}_{peer}_s"] = round(times[peer], 3)
        figures[f"{key}_{peer}_speed_ratio"] = round(times[peer] / times["chunked"], 3)
    figures[f"{key}_losses"] = times["losses"]
    return figures


if __name__ == "__main__":
    main()
