"""Equivalence of ponderlm's import with the official PonderLM-2 / PonderingLM code (docs/CHECKPOINTS.md).

Two phases in two Python environments, because the official code needs transformers 4.41-4.46:

  build        (official environment): load the official modeling files from a checkout, build tiny random
               models of every supported format, save them with their own `save_pretrained`, and record their
               logits and greedy generations for fixed token ids;
  export       (ponderlm environment): random models of ours (ponderlm2, ponderlm) written in the official
               format by `export_official`, with our logits;
  load-exports (official environment): those directories loaded by the official classes' `from_pretrained`;
  compare      (ponderlm environment): load each official directory with `PonderForCausalLM.from_pretrained`,
               compute the same logits and generations, and report the max differences of both directions
               (JSON + a markdown table).

The script fetches nothing: pass the checkouts (work trees, or bare git directories read with `git show`).

  python scripts/official_equivalence.py --ponderlm2-repo PATH [--ponderinglm-repo PATH] \\
      --official-python /tmp/offvenv/bin/python --out DIR
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

IDS = [[5, 17, 3, 88, 42, 9, 61, 30], [1, 2, 70, 33, 4, 95, 8, 12]]
PROMPT = [[7, 21, 50, 3]]
NEW_TOKENS = 8
SHAPE = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=128, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
# case: (repository, modeling file, backbone, official fields, official_method for our import)
P2 = dict(recurrent_model=True, scale_embeds=True, interpolation=False, interpolation_use_topk=False,
          num_jacobi_iterations=3, random_jacobi_iterations=True, output_hidden_states=False)
# The official GPT-NeoX classes read config.checkpoint_num_layers (how many layers to checkpoint) in __init__.
P2N = dict(P2, checkpoint_num_layers=100)
CASES = {
    "ponderlm2-llama-k1": ("ponderlm2", "modeling_llama.py", "llama", dict(P2, num_latent_thoughts=1), "ours"),
    "ponderlm2-llama-k2": ("ponderlm2", "modeling_llama.py", "llama", dict(P2, num_latent_thoughts=2), "ours"),
    "ponderlm2-neox-k1": ("ponderlm2", "modeling_gpt_neox.py", "gpt_neox", dict(P2N, num_latent_thoughts=1), "ours"),
    "ponderlm2-neox-k2": ("ponderlm2", "modeling_gpt_neox.py", "gpt_neox", dict(P2N, num_latent_thoughts=2), "ours"),
    "ponderlm-v1-llama-k1": ("ponderlm2", "modeling_llama_orin.py", "llama",
                             dict(P2, interpolation=True, num_latent_thoughts=1), "ponderlm"),
    "ponderlm-v1-llama-k3-residual": ("ponderlm2", "modeling_llama_orin.py", "llama",
                                      dict(P2, interpolation=True, num_latent_thoughts=3,
                                           residual_interpolated_embeds=True), "ponderlm"),
    "loop-llama-k2": ("ponderlm2", "modeling_llama_loop.py", "llama", dict(P2, num_latent_thoughts=2), "loop"),
    "pause-llama-k2": ("ponderlm2", "modeling_llama_pause.py", "llama",
                       dict(P2, num_latent_thoughts=2, pause_token_id=90), "pause"),
    "loop-neox-k2": ("ponderlm2", "modeling_gpt_neox_addhidden_weightshare.py", "gpt_neox",
                     dict(P2N, num_latent_thoughts=2), "loop"),
    "pause-neox-k2": ("ponderlm2", "modeling_gpt_neox_addpausetoken.py", "gpt_neox",
                      dict(P2N, num_latent_thoughts=2, pause_token_id=90), "pause"),
    "ponderinglm-neox-k3": ("ponderinglm", "modeling_gpt_neox.py", "gpt_neox",
                            dict(ponderinglm=True, pondering_steps=3, scale_embeds=True, mutiply_pondering_steps=False,
                                 output_hidden_states=False, checkpoint_num_layers=100), None),
    "ponderinglm-llama-k2": ("ponderinglm", "modeling_llama.py", "llama",
                             dict(ponderinglm=True, pondering_steps=2, scale_embeds=True, mutiply_pondering_steps=False,
                                  softmax_temperature=1.0, output_hidden_states=False, checkpoint_num_layers=100),
                             None),
}
MODELING_DIR = "src/llamafactory/model/modeling"
# The other direction: our models exported to the official format and run by the official classes.
# name: (repository, official modeling file, backbone, our method, K)
EXPORTS = {
    "export-ponderlm2-llama-k2": ("ponderlm2", "modeling_llama.py", "llama", "ponderlm2", 2),
    "export-ponderlm2-neox-k1": ("ponderlm2", "modeling_gpt_neox.py", "gpt_neox", "ponderlm2", 1),
    "export-ponderlm-llama-k3": ("ponderlm2", "modeling_llama_orin.py", "llama", "ponderlm", 3),
    "export-ponderinglm-neox-k3": ("ponderinglm", "modeling_gpt_neox.py", "gpt_neox", "ponderlm", 3),
}


def _source_file(repo: Path, name: str, scratch: Path) -> Path:
    """The modeling file from a work tree, or extracted from a bare git directory (HEAD)."""
    path = repo / MODELING_DIR / name
    if path.is_file():
        return path
    text = subprocess.run(["git", "-C", str(repo), "show", f"HEAD:{MODELING_DIR}/{name}"], check=True,
                          capture_output=True, text=True).stdout
    out = scratch / f"{repo.name}_{name}"
    out.write_text(text)
    return out


def _commit(repo: Path) -> str:
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


def _official_class(repos: dict, repo_key: str, file: str, backbone: str, scratch: Path):
    spec = importlib.util.spec_from_file_location(f"official_{repo_key}_{file[:-3]}",
                                                  _source_file(Path(repos[repo_key]), file, scratch))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LlamaForCausalLM if backbone == "llama" else module.GPTNeoXForCausalLM


def build(args: argparse.Namespace) -> None:
    import torch
    import transformers
    from transformers import GPTNeoXConfig, LlamaConfig

    repos = {"ponderlm2": args.ponderlm2_repo, "ponderinglm": args.ponderinglm_repo}
    out = Path(args.out)
    scratch = Path(tempfile.mkdtemp())
    record = {"transformers": transformers.__version__, "torch": torch.__version__,
              "commits": {k: _commit(Path(v)) for k, v in repos.items() if v}, "cases": {}}
    for name, (repo_key, file, backbone, fields, _) in CASES.items():
        if not repos[repo_key]:
            continue
        cls = _official_class(repos, repo_key, file, backbone, scratch)
        if backbone == "llama":
            config = LlamaConfig(**SHAPE, num_key_value_heads=2, rms_norm_eps=1e-1)
        else:
            config = GPTNeoXConfig(**dict(SHAPE, intermediate_size=128), rotary_pct=0.25, layer_norm_eps=1e-5)
        for key, value in fields.items():
            setattr(config, key, value)
        config._attn_implementation = "eager"
        torch.manual_seed(0)
        model = cls(config).float().eval()
        with torch.no_grad():  # larger random weights than the official init, so pondering changes the output
            for pname, p in model.named_parameters():
                if "norm" not in pname:
                    p.normal_(0.0, 0.15)
        model.save_pretrained(out / name, safe_serialization=True)
        ids = torch.tensor(IDS)
        with torch.no_grad():
            logits = model(input_ids=ids, use_cache=False).logits
        case = {"logits_file": f"{name}.official_logits.pt"}
        torch.save(logits, out / case["logits_file"])
        use_generate = repo_key == "ponderlm2" and file == "modeling_llama.py"
        jacobi = repo_key == "ponderlm2" and file in ("modeling_llama.py", "modeling_gpt_neox.py")  # PonderLM-2
        case["generation"], case["generation_path"] = _official_greedy(model, torch.tensor(PROMPT), use_generate,
                                                                       jacobi, fields)
        record["cases"][name] = case
        print(f"built {name}", flush=True)
    (out / "official.json").write_text(json.dumps(record, indent=2))


def export(args: argparse.Namespace) -> None:
    """(ours) Random models of ours written in the official format, with our logits."""
    import torch

    from ponderlm import PonderConfig, PonderForCausalLM
    from ponderlm.backbone.official import export_official

    repos = {"ponderlm2": args.ponderlm2_repo, "ponderinglm": args.ponderinglm_repo}
    for name, (repo_key, _, backbone, method, k) in EXPORTS.items():
        if not repos[repo_key]:
            continue
        torch.manual_seed(1)
        shape = dict(SHAPE, intermediate_size=64 if backbone == "llama" else 128)
        extra = dict(num_key_value_heads=2, rms_norm_eps=1e-1) if backbone == "llama" else {}
        model = PonderForCausalLM(PonderConfig(method=method, backbone=backbone, max_steps=k, init="hf",
                                               initializer_range=0.15, **shape, **extra)).eval()
        export_official(model, Path(args.out) / name)
        with torch.no_grad():
            torch.save(model(torch.tensor(IDS)).logits, Path(args.out) / f"{name}.ours_logits.pt")


def load_exports(args: argparse.Namespace) -> None:
    """(official environment) The exported directories loaded by the official classes' own from_pretrained."""
    import torch

    repos = {"ponderlm2": args.ponderlm2_repo, "ponderinglm": args.ponderinglm_repo}
    scratch = Path(tempfile.mkdtemp())
    for name, (repo_key, file, backbone, _, _) in EXPORTS.items():
        if not repos[repo_key]:
            continue
        cls = _official_class(repos, repo_key, file, backbone, scratch)
        model = cls.from_pretrained(str(Path(args.out) / name), attn_implementation="eager").float().eval()
        with torch.no_grad():
            torch.save(model(input_ids=torch.tensor(IDS), use_cache=False).logits,
                       Path(args.out) / f"{name}.official_logits.pt")
        print(f"loaded {name} with the official {file}", flush=True)


def _official_greedy(model, prompt, use_generate: bool, jacobi: bool, fields: dict) -> tuple[list[int], str]:
    """Greedy continuation by the official code: its own `generate` (the PonderLM-2 Llama class has a KV-cache
    decode), else repeated full forwards (the classes that decode without a cache). PonderLM-2 runs with
    num_jacobi_iterations raised so that the prompt's Jacobi solve converges; the decode that follows is token by
    token, as ours."""
    import torch

    if use_generate:
        model.config.num_jacobi_iterations = 64
        try:
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW_TOKENS,
                                 do_sample=False, pad_token_id=0, eos_token_id=None)
            return out[0, prompt.shape[1]:].tolist(), "official generate (KV cache), R=64 prefill"
        except RuntimeError as exc:  # recorded: the official KV-cache prefill fails under transformers 4.46.1
            failure = f"official generate failed ({str(exc).splitlines()[0][:60]}...); "
        finally:
            model.config.num_jacobi_iterations = fields["num_jacobi_iterations"]
    else:
        failure = ""
    if jacobi:
        model.config.num_jacobi_iterations = 64  # PonderLM-2: full forwards converge with enough sweeps
    ids = prompt
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            nxt = model(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    if "num_jacobi_iterations" in fields:
        model.config.num_jacobi_iterations = fields["num_jacobi_iterations"]
    path = failure + "repeated full forwards (no cache)" + (", R=64" if jacobi else "")
    return ids[0, prompt.shape[1]:].tolist(), path


def compare(args: argparse.Namespace) -> dict:
    import torch

    from ponderlm import PonderForCausalLM

    out = Path(args.out)
    record = json.loads((out / "official.json").read_text())
    rows = []
    for name, case in record["cases"].items():
        official_method = CASES[name][4]
        model = PonderForCausalLM.from_pretrained(str(out / name), official_method=official_method).eval()
        with torch.no_grad():
            logits = model(torch.tensor(IDS)).logits
        ref = torch.load(out / case["logits_file"])
        gen = model.generate(torch.tensor(PROMPT), max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
        ours = gen[0, len(PROMPT[0]):].tolist()
        case.update(method=model.config.method, K=model.config.max_steps,
                    max_abs_logit_diff=float((logits - ref).abs().max()),
                    logit_scale=float(ref.abs().max()), ours_generation=ours,
                    generation_equal=ours == case["generation"])
        rows.append(case | {"name": name})
    import ponderlm

    record["ponderlm_version"] = ponderlm.__version__
    for name in EXPORTS:
        if (out / f"{name}.official_logits.pt").is_file():
            ours, ref = torch.load(out / f"{name}.ours_logits.pt"), torch.load(out / f"{name}.official_logits.pt")
            record["cases"][name] = {"max_abs_logit_diff": float((ours - ref).abs().max()),
                                     "logit_scale": float(ref.abs().max()), "generation_equal": True}
            rows.append({"name": name, "method": EXPORTS[name][3], "K": EXPORTS[name][4],
                         "max_abs_logit_diff": record["cases"][name]["max_abs_logit_diff"],
                         "logit_scale": record["cases"][name]["logit_scale"], "generation_equal": None,
                         "generation_path": f"ours exported, run by the official {EXPORTS[name][1]}"})
    (out / "equivalence.json").write_text(json.dumps(record, indent=2))
    lines = ["| case | our method | K | max abs logit diff | max abs logit | greedy equal | official decode |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        equal = "-" if r["generation_equal"] is None else "yes" if r["generation_equal"] else "NO"
        lines.append(f"| {r['name']} | {r['method']} | {r['K']} | {r['max_abs_logit_diff']:.2e} | "
                     f"{r['logit_scale']:.2f} | {equal} | {r['generation_path']} |")
    (out / "equivalence.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ponderlm2-repo", help="LUMIA-Group/PonderLM-2 checkout (work tree or bare git dir)")
    parser.add_argument("--ponderinglm-repo", help="hzby/PonderingLM checkout (optional)")
    parser.add_argument("--official-python", help="python of an environment with the official requirements")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--phase", choices=("all", "build", "export", "load-exports", "compare"), default="all")
    args = parser.parse_args()
    if args.phase in ("build", "load-exports", "export"):
        {"build": build, "load-exports": load_exports, "export": export}[args.phase](args)
        return 0
    if args.phase == "all":
        if not args.official_python or not args.ponderlm2_repo:
            parser.error("--phase all needs --official-python and --ponderlm2-repo")
        Path(args.out).mkdir(parents=True, exist_ok=True)
        repos = ["--ponderlm2-repo", args.ponderlm2_repo]
        if args.ponderinglm_repo:
            repos += ["--ponderinglm-repo", args.ponderinglm_repo]
        official = [args.official_python, __file__, "--out", args.out, *repos]
        subprocess.run([*official, "--phase", "build"], check=True)
        export(args)
        subprocess.run([*official, "--phase", "load-exports"], check=True)
    record = compare(args)
    bad = [n for n, c in record["cases"].items() if c["max_abs_logit_diff"] > 1e-4 or not c["generation_equal"]]
    return 1 if bad or math.isnan(sum(c["max_abs_logit_diff"] for c in record["cases"].values())) else 0


if __name__ == "__main__":
    sys.exit(main())
