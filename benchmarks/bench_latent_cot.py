"""Adaptive latent CoT vs PonderLM-2 at the same K and size: training and decode tokens/s, side by side,
next to the average executed steps; then a short cot_lambda / cot_beta sweep (avg steps, val loss).

Part 1 (speed): one process, interleaved timing. latent_cot rows use a random router with spread and a
halting threshold (`--tau`), with the router bias chosen per row so the depth is full, partial or zero;
the cost depends only on how many slots run, not on whether the depths were learned.
Part 2 (sweep, a smaller model by default): short training runs on the bundled corpus + tokenizer
(`ponderlm.data`), or synthetic data if that is unavailable (`--synthetic`); reports avg executed steps,
expected steps (mean sum_k r_k) and val loss, with vanilla and PonderLM-2 at the same steps for context.
Usage: python benchmarks/bench_latent_cot.py [--hidden 128 --layers 4 --K 3 --seq 128 --batch 8]
       [--sweep-hidden 64 --sweep-layers 2 --sweep-steps 300] [--skip-speed | --skip-sweep] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch
from common import interleaved_medians, print_table, setup_threads

from ponderlm import PonderConfig, PonderForCausalLM
from ponderlm.inference import sequential_logits
from ponderlm.registry import method_class


def build(method: str, args, vocab: int, hidden: int, layers: int, **kw) -> PonderForCausalLM:
    torch.manual_seed(0)
    cfg = PonderConfig(method=method, hidden_size=hidden, num_hidden_layers=layers,
                       num_attention_heads=args.heads, vocab_size=vocab, max_position_embeddings=1024,
                       max_steps=args.K if method_class(method).takes_steps else 0, jacobi_iters_train=[args.sweeps],
                       jacobi_iters_eval=args.sweeps, **kw)
    return PonderForCausalLM(cfg)


# ------------------------------------------------------------------ part 1: speed
def speed(args) -> None:
    vocab = 4096
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (args.batch, args.seq), generator=g)
    dec_ids = torch.randint(0, vocab, (args.decode_batch, args.decode_tokens), generator=g)
    models = {f"ponderlm2 (R={args.sweeps})": build("ponderlm2", args, vocab, args.hidden, args.layers)}
    for bias in args.router_bias:
        model = build("latent_cot", args, vocab, args.hidden, args.layers, tau=args.tau)
        with torch.no_grad():
            model.method.router.weight.normal_(0.0, args.router_std)
            model.method.router.bias.fill_(bias)
        models[f"latent_cot b={bias:+g}"] = model
    steps_train, steps_dec = {}, {}

    def train_step(name, model):
        def run():
            model.train().zero_grad(set_to_none=True)
            out = model(ids, labels=ids)
            out.loss.backward()
            steps_train[name] = float(out.executed_steps.mean())
        return run

    def decode(name, model):
        def run():
            _, steps = sequential_logits(model, dec_ids)
            steps_dec[name] = float(steps.mean())
        return run

    t_train = interleaved_medians({n: train_step(n, m) for n, m in models.items()}, repeats=args.repeats)
    t_dec = interleaved_medians({n: decode(n, m) for n, m in models.items()}, repeats=args.repeats)
    ref = next(iter(models))
    K, R = args.K, args.sweeps
    slots = {ref: K * (K + 1) / 2 + (R + 1) * (K + 1)}  # PonderLM-2: K stage passes + (R+1) full passes
    for name, model in models.items():
        if name != ref:
            with torch.no_grad():
                out = model.method(model.backbone, ids, torch.ones_like(ids))
                slots[name] = out.stats["slots_computed"] / ids.numel()
    rows = []
    for name in models:
        rows.append({"model": name, "steps (train)": steps_train[name], "slots/tok": slots[name],
                     "train tok/s": args.batch * args.seq / t_train[name],
                     "train x": t_train[ref] / t_train[name], "ideal x": slots[ref] / slots[name],
                     "steps (dec)": steps_dec[name], "decode tok/s": dec_ids.numel() / t_dec[name],
                     "decode x": t_dec[ref] / t_dec[name], "ideal dec x": (1 + K) / (1 + steps_dec[name])})
    print(f"[speed] d={args.hidden} L={args.layers} heads={args.heads} K={args.K} train T={args.seq} B={args.batch} "
          f"decode T={args.decode_tokens} B={args.decode_batch} tau={args.tau} router_std={args.router_std} "
          f"threads={torch.get_num_threads()}")
    print("x = speed relative to PonderLM-2; ideal x = ratio of backbone slots per token (train: slots/tok incl.")
    print("batch-packing filler; decode: (1+K)/(1+steps) backbone calls), i.e. cost linear in slots.")
    print_table(rows)


# ------------------------------------------------------------------ part 2: lambda / beta sweep
def load_data(args) -> tuple[torch.Tensor, torch.Tensor, int, str]:
    """(train tokens [N], val tokens [M], vocab, source name)."""
    if not args.synthetic:
        try:
            from ponderlm.data import iter_default_corpus, load_tokenizer

            tok = load_tokenizer()

            def take(split: str, chars: int) -> torch.Tensor:
                out, n = [], 0
                for rec in iter_default_corpus(split):
                    out.extend(tok(rec["text"])["input_ids"] + [tok.eos_token_id or 0])
                    n += len(rec["text"])
                    if n >= chars:
                        break
                return torch.tensor(out)

            return take("train", args.train_chars), take("val", args.val_chars), len(tok), "bundled corpus"
        except Exception as exc:  # corpus or tokenizer not available: fall back to synthetic data
            print(f"[sweep] bundled data unavailable ({exc}); using synthetic data")
    # Synthetic: a noisy affine chain over 256 symbols, learnable but not trivial.
    g = torch.Generator().manual_seed(0)
    n = 400_000
    x = torch.empty(n, dtype=torch.long)
    x[0] = 0
    noise = torch.randint(0, 4, (n,), generator=g)
    for i in range(1, n):
        x[i] = (x[i - 1] * 5 + 3 + noise[i]) % 256
    return x[: int(0.9 * n)], x[int(0.9 * n):], 256, "synthetic"


def batches(tokens: torch.Tensor, seq: int, batch: int, g: torch.Generator):
    while True:
        starts = torch.randint(0, tokens.numel() - seq, (batch,), generator=g)
        yield torch.stack([tokens[s : s + seq] for s in starts.tolist()])


@torch.no_grad()
def evaluate(model, val: torch.Tensor, seq: int, n_seqs: int) -> dict[str, float]:
    model.eval()
    ids = torch.stack([val[i * seq : (i + 1) * seq] for i in range(n_seqs)])
    losses, steps, expected = [], [], []
    for chunk in ids.split(16):
        out = model(chunk, labels=chunk)
        losses.append(float(out.lm_loss))
        steps.append(float(out.executed_steps.mean()))
        if model.config.method == "latent_cot":
            stats = model.method(model.backbone, chunk, torch.ones_like(chunk)).stats
            expected.append(float(stats["expected_steps"].mean()))
    model.train()
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")
    return {"val loss": mean(losses), "avg steps": mean(steps), "expected steps": mean(expected)}


def sweep(args) -> None:
    train, val, vocab, source = load_data(args)
    scale = (2.5 * args.sweep_hidden) ** 0.5
    runs: list[tuple[str, str, dict]] = [] if args.no_baselines else [
        ("vanilla", "vanilla", {}),
        # latent_cot's token slots use E[x] * sqrt(2.5 d): this vanilla isolates the embedding scale's effect.
        ("vanilla", "vanilla embed*sqrt(2.5d)", {"embed_scale": scale}),
        ("ponderlm2", f"ponderlm2 R={args.sweeps}", {}),
    ]
    for lam, beta in args.grid:
        runs.append(("latent_cot", f"latent_cot lambda={lam:g} beta={beta:g}",
                     {"cot_lambda": lam, "cot_beta": beta, "tau": args.sweep_tau}))
    rows = []
    for method, name, kw in runs:
        model = build(method, args, vocab, args.sweep_hidden, args.sweep_layers, **kw).train()
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
        data = batches(train, args.sweep_seq, args.sweep_batch, torch.Generator().manual_seed(0))
        start = time.perf_counter()
        for step in range(args.sweep_steps):
            for group in opt.param_groups:  # short linear warmup then constant
                group["lr"] = args.lr * min(1.0, (step + 1) / 20)
            ids = next(data)
            loss = model(ids, labels=ids).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        seconds = time.perf_counter() - start
        rows.append({"run": name, **evaluate(model, val, args.sweep_seq, args.val_seqs), "train s": seconds})
        print(f"  {rows[-1]}", flush=True)
    print(f"[sweep] {source}: vocab={vocab} d={args.sweep_hidden} L={args.sweep_layers} K={args.K} "
          f"steps={args.sweep_steps} B={args.sweep_batch} T={args.sweep_seq} lr={args.lr} tau={args.sweep_tau} "
          f"(val: {args.val_seqs} x {args.sweep_seq} tokens; avg steps = executed under hard halting)")
    print_table(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--K", type=int, default=3)
    parser.add_argument("--sweeps", type=int, default=2, help="PonderLM-2 Jacobi sweeps R (fixed)")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--decode-batch", type=int, default=1)
    parser.add_argument("--tau", type=float, default=0.3, help="halting threshold of the speed rows")
    parser.add_argument("--router-std", type=float, default=0.1)
    parser.add_argument("--router-bias", type=float, nargs="+", default=[30.0, 1.5, 0.0, -30.0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--no-baselines", action="store_true", help="sweep latent_cot runs only")
    parser.add_argument("--train-chars", type=int, default=3_000_000)
    parser.add_argument("--val-chars", type=int, default=300_000)
    parser.add_argument("--sweep-hidden", type=int, default=64)
    parser.add_argument("--sweep-layers", type=int, default=2)
    parser.add_argument("--sweep-steps", type=int, default=300)
    parser.add_argument("--sweep-batch", type=int, default=16)
    parser.add_argument("--sweep-seq", type=int, default=64)
    parser.add_argument("--sweep-tau", type=float, default=1e-4)
    parser.add_argument("--val-seqs", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--grid", type=lambda s: tuple(float(x) for x in s.split(",")), nargs="+",
                        default=[(0.0, 1.0), (0.1, 1.0), (1.0, 1.0), (1.0, 0.0), (1.0, 2.0)],
                        help="lambda,beta pairs")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    setup_threads(args.threads)
    if not args.skip_speed:
        speed(args)
    if not args.skip_sweep:
        sweep(args)


if __name__ == "__main__":
    main()
