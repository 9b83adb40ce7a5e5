"""Bad inputs end in one `error: ...` line naming the value or file, exit code 2, and nothing lost or created.

Table-driven: each case is the argv of `ponderlm ...` (run in-process through `ponderlm.cli.main`), a regex the
single stderr line must match, and optionally a `setup` that writes the damaged input into the case's
directory. Every case snapshots its directory and the shared model / data directories before and after:
any file created, changed or deleted fails the case. docs/RELIABILITY.md lists what is covered.

Placeholders in argv: {tmp} the case's directory, {model} a tiny saved ponderlm3 model with tokenizer,
{data} a prepared data directory, {recipe} a tiny training recipe (written into {tmp}). Resume cases copy
a run of that recipe (one checkpoint, step 2) into {tmp}/run, damage it and rehash its manifest (an attacker
writes the manifest too), so only the field checks stand between the file and the trainer.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers import rehash_manifest
from safetensors.torch import load_file, save_file

from ponderlm.cli import main

RECIPE = """\
name: bad
model: {{backbone: llama, method: ponderlm2, max_steps: 1, hidden_size: 32, num_hidden_layers: 1,
        num_attention_heads: 2, max_position_embeddings: 64}}
data: {{data_dir: {data}, seq_len: 32}}
train: {{steps: 2, batch_size: 2, eval_every: 2, eval_batches: 1, save_every: 2, sample_tokens: 0, device: cpu}}
log: {{tensorboard: false}}
"""


@dataclass
class Case:
    id: str
    argv: str  # split on whitespace after filling the placeholders; use {sp} for a space inside one argument
    error: str  # regex searched in the single stderr line
    setup: Callable[[Path], None] | None = None
    needs_cpu_only: bool = False  # the case is about CUDA being absent
    needs_module: str | None = None  # an optional extra the command checks for first


# ------------------------------------------------------------------ damaged inputs (setup functions)
def _write(name: str, content: str | bytes) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return setup


def _model_copy(damage: Callable[[Path], None]) -> Callable[[Path], None]:
    """Copy the shared model to {tmp}/m, then damage the copy."""
    def setup(tmp: Path) -> None:
        shutil.copytree(_SHARED["model"], tmp / "m")
        damage(tmp / "m")
    return setup


def _truncate(name: str) -> Callable[[Path], None]:
    def damage(m: Path) -> None:
        blob = (m / name).read_bytes()
        (m / name).write_bytes(blob[: len(blob) // 2])
    return damage


def _scribble_header(m: Path) -> None:
    blob = bytearray((m / "model.safetensors").read_bytes())
    blob[8:64] = b"\x00" * 56  # the JSON header right after its 8-byte length
    (m / "model.safetensors").write_bytes(bytes(blob))


def _config_edit(**changes) -> Callable[[Path], None]:
    def damage(m: Path) -> None:
        config = json.loads((m / "config.json").read_text())
        config.update(changes)
        (m / "config.json").write_text(json.dumps(config))
    return damage


def _weights_edit(edit: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], None]:
    def damage(m: Path) -> None:
        tensors = load_file(str(m / "model.safetensors"))
        edit(tensors)
        save_file(tensors, str(m / "model.safetensors"), metadata={"format": "pt"})
    return damage


def _nan_weight(t: dict[str, torch.Tensor]) -> None:
    t["model.norm.weight"][0] = float("nan")


def _drop_tensor(t: dict[str, torch.Tensor]) -> None:
    del t["model.layers.0.input_layernorm.weight"]


def _small_vocab_model(tmp: Path) -> None:
    """A model whose vocab_size (300) is smaller than the tokenizer saved with it (4096)."""
    from ponderlm import PonderConfig, PonderForCausalLM
    from ponderlm.data.tokenizer import load_tokenizer

    torch.manual_seed(0)
    PonderForCausalLM(PonderConfig(method="vanilla", vocab_size=300, hidden_size=16, num_hidden_layers=1,
                                   num_attention_heads=2, max_position_embeddings=64)).save_pretrained(tmp / "m")
    load_tokenizer("default").save_pretrained(tmp / "m")


def _user_files(tmp: Path) -> None:
    """A directory of the user's own files, with names a run also writes."""
    for name in ("notes.txt", "metrics.jsonl", "summary.json", "final/README.md"):
        _write(f"own/{name}", f"the user's {name}\n")(tmp)


def _finished_run(tmp: Path) -> None:
    """A run directory with a complete checkpoint (its manifest), the work a fresh run must not destroy."""
    _write("run/config.yaml", "name: earlier\n")(tmp)
    _write("run/checkpoints/step_000004/manifest.json", '{"step": 4, "files": {}}')(tmp)


def _prepared_copy(meta: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        shutil.copytree(_SHARED["data"], tmp / "d")
        (tmp / "d" / "meta.json").write_text(meta)
    return setup


def _random_bytes(name: str) -> Callable[[Path], None]:
    return _write(name, torch.randint(0, 256, (4000,), generator=torch.Generator().manual_seed(0),
                                      dtype=torch.uint8).numpy().tobytes())


def _text(name: str) -> Callable[[Path], None]:
    return _write(name, "\n\n".join(f"Paragraph {i} is about the number {i} and a cat." for i in range(60)))


# ------------------------------------------------------------------ crafted run directories (resume, links)
def _run_copy(damage: Callable[[Path], None] | None = None, rehash: bool = True) -> Callable[[Path], None]:
    """Copy the shared run (checkpoint at step 2, final/) to {tmp}/run, then damage its checkpoint."""
    def setup(tmp: Path) -> None:
        shutil.copytree(_SHARED["run"], tmp / "run")
        if damage is not None:
            damage(tmp / "run" / "checkpoints" / "step_000002")
            if rehash:
                rehash_manifest(tmp / "run" / "checkpoints" / "step_000002")
    return setup


def _state_edit(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(ckpt: Path) -> None:
        state = json.loads((ckpt / "trainer_state.json").read_text())
        edit(state)
        (ckpt / "trainer_state.json").write_text(json.dumps(state))
    return damage


def _rng_file(tensor: torch.Tensor) -> Callable[[Path], None]:
    return lambda ckpt: save_file({"torch_cpu": tensor}, str(ckpt / "rng.safetensors"))


def _ckpt_weights(edit: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], None]:
    return lambda ckpt: _weights_edit(edit)(ckpt)


def _optimizer_edit(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(ckpt: Path) -> None:
        state = torch.load(ckpt / "optimizer.pt", weights_only=True)
        edit(state)
        torch.save(state, ckpt / "optimizer.pt")
    return damage


def _manifest_outside(ckpt: Path) -> None:
    """The manifest names a file outside the checkpoint (its hash matches: the attacker computed it)."""
    (ckpt.parents[2] / "precious.txt").write_text("the user's file\n")
    manifest = json.loads((ckpt / "manifest.json").read_text())
    blob = b"the user's file\n"
    manifest["files"]["../../../precious.txt"] = {"bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


def _precious(tmp: Path) -> None:
    (tmp / "precious.txt").write_text("the user's file: must never be written or deleted\n")


def _linked_lock(with_run: bool) -> Callable[[Path], None]:
    """`run/.ponderlm.lock` is a link to a file outside the run (in a full run, or alone in its directory)."""
    def setup(tmp: Path) -> None:
        _precious(tmp)
        if with_run:
            _run_copy()(tmp)
            (tmp / "run" / ".ponderlm.lock").unlink()
        else:
            (tmp / "run").mkdir()
        (tmp / "run" / ".ponderlm.lock").symlink_to("../precious.txt")
    return setup


def _linked_dir(name: str) -> Callable[[Path], None]:
    """`run/<name>` is a link to a directory outside the run (its content moved there)."""
    def setup(tmp: Path) -> None:
        _run_copy()(tmp)
        target = tmp / "elsewhere"
        if (tmp / "run" / name).exists():
            shutil.move(tmp / "run" / name, target)
        else:
            target.mkdir()
        (tmp / "run" / name).symlink_to(os.path.relpath(target, tmp / "run"))
    return setup


def _linked_step(tmp: Path) -> None:
    """A newer checkpoint directory inside checkpoints/ is a link to one outside (rotation would delete it)."""
    _run_copy()(tmp)
    shutil.copytree(tmp / "run" / "checkpoints" / "step_000002", tmp / "elsewhere")
    (tmp / "run" / "checkpoints" / "step_000004").symlink_to("../../elsewhere")


def _linked_metrics(tmp: Path) -> None:
    """A run that stopped before its first checkpoint, whose metrics.jsonl is a link (a restart would unlink
    it; the logger would append through it)."""
    _precious(tmp)
    _write("run/.ponderlm.lock", "")(tmp)
    _write("run/config.yaml", "name: earlier\n")(tmp)
    (tmp / "run" / "metrics.jsonl").symlink_to("../precious.txt")


# ------------------------------------------------------------------ crafted model and data directories
def _remote_tokenizer(tmp: Path) -> None:
    """A model whose tokenizer_config.json asks transformers to import tok_evil.py from the directory."""
    _model_copy(lambda m: None)(tmp)
    config = json.loads((tmp / "m" / "tokenizer_config.json").read_text())
    config.update(auto_map={"AutoTokenizer": ["tok_evil.EvilTok", None]}, tokenizer_class="EvilTok")
    (tmp / "m" / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp / "m" / "tok_evil.py").write_text(f"open({str(tmp / 'PWNED')!r}, 'w').close()\n"
                                           "from transformers import PreTrainedTokenizerFast as EvilTok\n")


def _remote_config(tmp: Path) -> None:
    """A checkpoint whose config.json has a model type only its own configuration_evil.py defines."""
    (tmp / "evil").mkdir()
    (tmp / "evil" / "config.json").write_text(json.dumps(
        {"model_type": "evilnet", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}}))
    (tmp / "evil" / "configuration_evil.py").write_text(
        f"open({str(tmp / 'PWNED')!r}, 'w').close()\n"
        "from transformers import PretrainedConfig\n\n\nclass EvilConfig(PretrainedConfig):\n"
        "    model_type = 'evilnet'\n")


def _config_drop(*keys: str) -> Callable[[Path], None]:
    def damage(m: Path) -> None:
        config = json.loads((m / "config.json").read_text())
        for key in keys:
            config.pop(key)
        (m / "config.json").write_text(json.dumps(config))
    return damage


def _fewer_layers(m: Path) -> None:
    config = json.loads((m / "config.json").read_text())
    _config_edit(num_hidden_layers=config["num_hidden_layers"] - 1)(m)


def _data_copy(damage: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        shutil.copytree(_SHARED["data"], tmp / "d")
        damage(tmp / "d")
    return setup


def _token_id(shard: str, position: int, value: int) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        blob = bytearray((d / shard).read_bytes())
        blob[2 * position : 2 * position + 2] = value.to_bytes(2, "little")  # uint16 shards
        (d / shard).write_bytes(bytes(blob))
    return damage


def _meta_edit(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        meta = json.loads((d / "meta.json").read_text())
        edit(meta)
        (d / "meta.json").write_text(json.dumps(meta))
    return damage


# ------------------------------------------------------------------ the table
GEN = "generate --model {model} --prompt hello --max-new-tokens 2"
PPL = "eval ppl --model {model} --max-batches 1 --seq-len 16 --no-progress"
TRAIN = "train {recipe} --out {tmp}/run"
CASES = [
    # -- training recipes and overrides
    Case("yaml-binary", "train {tmp}/bin.yaml --out {tmp}/run", r"bin\.yaml is not UTF-8 text",
         _write("bin.yaml", b"\x00\x01\xff\xfe\x80 binary")),
    Case("yaml-empty", "train {tmp}/empty.yaml --out {tmp}/run", r"empty\.yaml is empty; give a recipe",
         _write("empty.yaml", "")),
    Case("yaml-comments-only", "train {tmp}/c.yaml --out {tmp}/run", r"c\.yaml is empty",
         _write("c.yaml", "# nothing here\n")),
    Case("yaml-not-a-mapping", "train {tmp}/l.yaml --out {tmp}/run", r"a run config must be a mapping, got list",
         _write("l.yaml", "- a\n- b\n")),
    Case("yaml-syntax", "train {tmp}/s.yaml --out {tmp}/run", r"cannot parse .*s\.yaml", _write("s.yaml", "a: [1,\n")),
    Case("yaml-missing", "train {tmp}/nope.yaml --out {tmp}/run", r"config file not found: .*nope\.yaml"),
    Case("unknown-key", f"{TRAIN} train.stesp=3", r"unknown config key 'train\.stesp'; did you mean 'train\.steps'"),
    Case("bad-type", f"{TRAIN} optim.lr=abc", r"optim\.lr must be float, got 'abc'"),
    Case("seed-negative", f"{TRAIN} train.seed=-1", r"train\.seed must be in \[0, 2\*\*32\), got -1"),
    Case("seed-huge", f"{TRAIN} train.seed=99999999999999999999", r"train\.seed must be in .*got 99999999999999999999"),
    Case("lambda-steps-nan", f"{TRAIN} model.lambda_steps=.nan", r"lambda_steps must be a finite number, got nan"),
    Case("rope-theta-negative", f"{TRAIN} model.rope_theta=-1", r"rope_theta must be a finite number > 0, got -1"),
    Case("rms-norm-eps-nan", f"{TRAIN} model.rms_norm_eps=.nan", r"rms_norm_eps must be a finite number > 0, got nan"),
    Case("embed-scale-inf", f"{TRAIN} model.embed_scale=.inf", r"embed_scale must be a finite number > 0, got inf"),
    Case("layer-norm-eps-zero", f"{TRAIN} model.layer_norm_eps=0", r"layer_norm_eps must be a finite number > 0"),
    Case("lr-nan", f"{TRAIN} optim.lr=.nan", r"optim\.lr must be a finite number, got nan"),
    Case("lr-inf", f"{TRAIN} optim.lr=.inf", r"optim\.lr must be a finite number, got inf"),
    Case("steps-zero", f"{TRAIN} --max-steps 0", r"train\.steps must be an integer >= 1, got 0"),
    Case("batch-zero", f"{TRAIN} train.batch_size=0", r"train\.batch_size must be an integer >= 1, got 0"),
    Case("seq-len-too-long", f"{TRAIN} data.seq_len=128", r"data\.seq_len \(128\) exceeds model\.max_position_emb"),
    Case("model-vocab-below-data", f"{TRAIN} model.vocab_size=300",
         r"model\.vocab_size \(300\) is smaller than the data's vocabulary \(4096\)"),
    Case("cuda-on-cpu-build", f"{TRAIN} train.device=cuda", r"train\.device=cuda but CUDA is not available",
         needs_cpu_only=True),
    Case("nproc-zero", f"{TRAIN} --nproc 0", r"--nproc must be >= 1, got 0"),
    # README order: CONFIG, flags, then overrides (the override must be parsed: its bad value is reported)
    Case("override-after-flags", "train {recipe} --out {tmp}/run --max-steps 1 train.seed=-7",
         r"train\.seed must be in \[0, 2\*\*32\), got -7"),
    Case("config-between-flags", "train --max-steps 1 {recipe} --out {tmp}/run data.seq_len=128",
         r"data\.seq_len \(128\) exceeds model\.max_position_embeddings \(64\)"),
    Case("meta-json-broken", f"{TRAIN} data.data_dir={{tmp}}/d", r"meta\.json is not valid JSON .*data prepare",
         _prepared_copy('{"vocab_size": 4096, "dtype": ')),
    Case("meta-json-null", f"{TRAIN} data.data_dir={{tmp}}/d", r"meta\.json is damaged .*data prepare",
         _prepared_copy("null")),
    Case("meta-json-missing-keys", f"{TRAIN} data.data_dir={{tmp}}/d", r"meta\.json is damaged \(needs vocab_size",
         _prepared_copy('{"vocab_size": 4096}')),
    # -- run directories
    Case("out-is-a-file", "train {recipe} --out {tmp}/f", r"--out .*/f is a file, not a directory",
         _write("f", "mine")),
    Case("out-under-a-file", "train {recipe} --out {tmp}/f/run", r"cannot write to output directory .*f is not a dir",
         _write("f", "mine")),
    Case("out-holds-user-files", "train {recipe} --out {tmp}/own",
         r"--out .*own already holds files that are not a ponderlm run \(final, metrics\.jsonl, notes\.txt, ",
         _user_files),
    Case("resume-user-files", "train {recipe} --out {tmp}/own --resume", r"--resume: .*own is not a ponderlm run",
         _user_files),
    Case("resume-missing-dir", "train {recipe} --out {tmp}/none --resume", r"--resume: .*none does not exist"),
    Case("resume-no-config", "train --out {tmp}/run --resume", r"--resume: .*run has no config\.yaml to resume with",
         _write("run/.ponderlm.lock", "")),
    Case("resume-missing-dir-no-config", "train --out {tmp}/none --resume", r"--resume: .*none does not exist"),
    Case("out-holds-finished-run", "train {recipe} --out {tmp}/run",
         r"already holds a run \(checkpoint at step 4\); pass --resume", _finished_run),
    # -- loading a saved model
    Case("safetensors-truncated", "generate --model {tmp}/m --prompt hi", r"could not load the model in .*m: ",
         _model_copy(_truncate("model.safetensors"))),
    Case("safetensors-corrupt-header", "generate --model {tmp}/m --prompt hi", r"could not load the model in .*m: ",
         _model_copy(_scribble_header)),
    Case("config-json-truncated", "generate --model {tmp}/m --prompt hi", r"config\.json is not valid JSON",
         _model_copy(_truncate("config.json"))),
    Case("config-json-null", "generate --model {tmp}/m --prompt hi", r"config\.json holds NoneType, not a model co",
         _model_copy(lambda m: (m / "config.json").write_text("null"))),
    Case("config-json-sizes-disagree", "generate --model {tmp}/m --prompt hi",
         r"config\.json in .*m does not match its weights: .* is \[.*32\] in the file but \[.*64\] for the config",
         _model_copy(_config_edit(hidden_size=64))),
    Case("config-json-bad-value", "generate --model {tmp}/m --prompt hi", r"rope_theta must be a finite number > 0",
         _model_copy(_config_edit(rope_theta=-1.0))),
    Case("weights-nan", "generate --model {tmp}/m --prompt hi", r"weights in .*m hold NaN or inf values \(model\.norm",
         _model_copy(_weights_edit(_nan_weight))),
    Case("weights-missing-tensor", "generate --model {tmp}/m --prompt hi",
         r"weights in .*m lack 1 tensor\(s\) the config needs \(model\.layers\.0\.input_layernorm\.weight\)",
         _model_copy(_weights_edit(_drop_tensor))),
    Case("tokenizer-larger-than-vocab", "generate --model {tmp}/m --prompt hi",
         r"tokenizer has 4096 tokens but the model's vocab_size is 300", _small_vocab_model),
    Case("model-missing", "generate --model {tmp}/nothing --prompt hi", r"model directory .*nothing does not exist"),
    Case("model-empty-dir", "generate --model {tmp}/e --prompt hi", r"e is neither a saved model",
         lambda tmp: (tmp / "e").mkdir()),
    Case("model-not-ponder", "generate --model {tmp}/m --prompt hi", r"holds a 'llama' model, not a ponderlm",
         _model_copy(_config_edit(model_type="llama"))),
    # -- generate options
    Case("device-cuda", f"{GEN} --device cuda", r"--device cuda: CUDA is not available", needs_cpu_only=True),
    Case("device-bogus", f"{GEN} --device tpu7", r"unknown device 'tpu7'"),
    Case("html-unwritable", f"{GEN} --html {{tmp}}/f/page.html", r"cannot write --html .*f is a file",
         _write("f", "mine")),
    Case("html-is-dir", f"{GEN} --html {{tmp}}", r"--html .* is a directory; give a file name"),
    Case("prompt-not-utf8", "generate --model {model} --prompt caf\udce9", r"--prompt is not valid UTF-8"),
    Case("top-p-5", f"{GEN} --temperature 1 --top-p 5", r"--top-p must be in \(0, 1\] .*got 5\.0"),
    Case("top-p-0", f"{GEN} --temperature 1 --top-p 0", r"--top-p must be in \(0, 1\]"),
    Case("top-k-negative", f"{GEN} --temperature 1 --top-k -3", r"--top-k must be >= 1, got -3"),
    Case("temperature-nan", f"{GEN} --temperature nan", r"--temperature must be a finite number, got nan"),
    Case("temperature-negative", f"{GEN} --temperature -1", r"--temperature must be >= 0"),
    Case("tau-nan", f"{GEN} --tau nan", r"--tau must be a finite number, got nan"),
    Case("max-new-tokens-zero", "generate --model {model} --prompt hi --max-new-tokens 0",
         r"--max-new-tokens must be >= 1, got 0"),
    Case("argparse-bad-int", "generate --model {model} --prompt hi --max-new-tokens many",
         r"ponderlm generate: argument --max-new-tokens: invalid int value: 'many' \(see ponderlm generate --help\)"),
    # -- evaluation
    Case("ppl-random-bytes", f"{PPL} --data {{tmp}}/noise.txt", r"noise\.txt looks binary, not UTF-8 text",
         _random_bytes("noise.txt")),
    Case("ppl-split-bogus-default", f"{PPL} --split bogus", r"the bundled corpus has splits val and train, not 'bo"),
    Case("ppl-split-bogus-prepared", f"{PPL} --data {{data}} --split bogus", r"unknown split 'bogus'"),
    Case("ppl-split-bogus-text", f"{PPL} --data {{tmp}}/t.txt --split bogus",
         r"--split bogus: .*t\.txt is not a prepared data directory", _text("t.txt")),
    Case("ppl-data-missing", f"{PPL} --data {{tmp}}/missing.txt", r"input not found: .*missing\.txt"),
    Case("ppl-seq-len-too-long", "eval ppl --model {model} --seq-len 100000", r"--seq-len 100000 exceeds"),
    Case("ppl-meta-broken", f"{PPL} --data {{tmp}}/d", r"meta\.json is not valid JSON", _prepared_copy("{")),
    Case("ppl-device-cuda", f"{PPL} --device cuda", r"--device cuda: CUDA is not available", needs_cpu_only=True),
    Case("ppl-alpha-nan", f"{PPL} --alpha nan", r"--alpha must be a finite number, got nan"),
    Case("pareto-out-unwritable", "pareto --model {model} --max-batches 1 --out {tmp}/f/sub",
         r"cannot write --out .*f is a file", _write("f", "mine")),
    Case("pareto-alpha-nan", "pareto --model {model} --alpha 1,nan", r"argument --alpha: expected finite numbers"),
    Case("lm-eval-output-unwritable", "lm-eval --model {model} --tasks ponder_cloze --output {tmp}/f/r.json",
         r"cannot write --output(_path)? .*f is a file", _write("f", "mine"), needs_module="lm_eval"),
    Case("analyze-out-is-file", "analyze difficulty --model {model} --max-batches 1 --out {tmp}/f",
         r"--out .*f is a file, not a directory", _write("f", "mine")),
    # -- tokenizer training and data preparation
    Case("tokenizer-binary-input", "tokenizer train --input {tmp}/noise.txt --vocab-size 300 --out {tmp}/tok",
         r"noise\.txt looks binary", _random_bytes("noise.txt")),
    Case("tokenizer-missing-input", "tokenizer train --input {tmp}/no{sp}such.txt --vocab-size 300 --out {tmp}/tok",
         r"input not found: .*no such\.txt"),
    Case("tokenizer-min-frequency", "tokenizer train --input {tmp}/t.txt --min-frequency -3 --out {tmp}/tok",
         r"min_frequency must be >= 0 .*got -3", _text("t.txt")),
    Case("tokenizer-vocab-tiny", "tokenizer train --input {tmp}/t.txt --vocab-size 10 --out {tmp}/tok",
         r"vocab_size must be at least 257", _text("t.txt")),
    Case("tokenizer-out-under-file", "tokenizer train --input {tmp}/t.txt --vocab-size 300 --out {tmp}/f/tok",
         r"cannot write to .*f is not a directory", lambda tmp: (_text("t.txt")(tmp), _write("f", "x")(tmp))),
    Case("prepare-binary-input", "data prepare --input {tmp}/noise.txt --out {tmp}/prep --num-proc 1",
         r"noise\.txt looks binary", _random_bytes("noise.txt")),
    Case("prepare-val-fraction", "data prepare --input {tmp}/t.txt --out {tmp}/prep --val-fraction 2",
         r"val_fraction must be in \[0, 1\), got 2", _text("t.txt")),
    # -- symbolic links in a run directory: nothing is written or deleted through one (precious.txt is outside)
    Case("lock-link-resume", "train {recipe} --out {tmp}/run --resume",
         r"run directory .*run holds a symbolic link \(\.ponderlm\.lock -> \.\./precious\.txt\); ponderlm never writes",
         _linked_lock(with_run=True)),
    Case("lock-link-fresh", "train {recipe} --out {tmp}/run",
         r"holds a symbolic link \(\.ponderlm\.lock -> \.\./precious\.txt\)", _linked_lock(with_run=False)),
    Case("checkpoints-link", "train {recipe} --out {tmp}/run --resume train.keep_last=1",
         r"holds a symbolic link \(checkpoints -> \.\./elsewhere\)", _linked_dir("checkpoints")),
    Case("tb-link", "train {recipe} --out {tmp}/run --resume", r"holds a symbolic link \(tb -> \.\./elsewhere\)",
         _linked_dir("tb")),
    Case("final-link", "train {recipe} --out {tmp}/run --resume", r"holds a symbolic link \(final -> \.\./elsewhere\)",
         _linked_dir("final")),
    Case("step-dir-link", "train {recipe} --out {tmp}/run --resume train.keep_last=1",
         r"holds a symbolic link \(checkpoints/step_000004 -> \.\./\.\./elsewhere\)", _linked_step),
    Case("metrics-link-restart", "train {recipe} --out {tmp}/run",
         r"holds a symbolic link \(metrics\.jsonl -> \.\./precious\.txt\)", _linked_metrics),
    # -- resume: every field read from a checkpoint is checked (the only checkpoint here: nothing to fall back to)
    Case("resume-rng-short", "train {recipe} --out {tmp}/run --resume",
         r"every checkpoint in .*checkpoints is corrupt \(newest: checkpoint .*step_000002 holds an invalid RNG state "
         r"\(torch_cpu state is torch\.uint8 \[100\], not uint8 \[5056\]\)",
         _run_copy(_rng_file(torch.zeros(100, dtype=torch.uint8)))),
    Case("resume-rng-dtype", "train {recipe} --out {tmp}/run --resume",
         r"invalid RNG state \(torch_cpu state is torch\.float32 \[5056\]",
         _run_copy(_rng_file(torch.zeros(5056)))),
    Case("resume-python-rng", "train {recipe} --out {tmp}/run --resume",
         r"invalid RNG state \(python / numpy RNG state",
         _run_copy(_state_edit(lambda s: s["rng"]["python"].__setitem__(1, s["rng"]["python"][1][:10])))),
    Case("resume-numpy-rng", "train {recipe} --out {tmp}/run --resume",
         r"invalid RNG state \(python / numpy RNG state",
         _run_copy(_state_edit(lambda s: s["rng"]["numpy"].__setitem__(2, "x")))),
    Case("resume-step-string", "train {recipe} --out {tmp}/run --resume",
         r"invalid trainer_state\.json \('2' is not an integer >= 1\)",
         _run_copy(_state_edit(lambda s: s.update(step="2")))),
    Case("resume-tokens-string", "train {recipe} --out {tmp}/run --resume",
         r"invalid trainer_state\.json \('many' is not an integer >= 0\)",
         _run_copy(_state_edit(lambda s: s.update(tokens_seen="many")))),
    Case("resume-loader-negative", "train {recipe} --out {tmp}/run --resume",
         r"invalid trainer_state\.json \(loader\.position: -5 is not an integer >= 0\)",
         _run_copy(_state_edit(lambda s: s["loader"].update(position=-5)))),
    Case("resume-weight-shape", "train {recipe} --out {tmp}/run --resume",
         r"invalid model\.safetensors \(model\.norm\.weight is \[7\], the model needs \[32\]\)",
         _run_copy(_ckpt_weights(lambda t: t.update({"model.norm.weight": torch.zeros(7)})))),
    Case("resume-weight-unexpected", "train {recipe} --out {tmp}/run --resume",
         r"invalid model\.safetensors \(unexpected tensor model\.layers\.9\.extra\)",
         _run_copy(_ckpt_weights(lambda t: t.update({"model.layers.9.extra": torch.zeros(2)})))),
    Case("resume-weight-dtype", "train {recipe} --out {tmp}/run --resume",
         r"invalid model\.safetensors \(model\.norm\.weight is F16, the model needs torch\.float32\)",
         _run_copy(_ckpt_weights(lambda t: t.update({"model.norm.weight": t["model.norm.weight"].half()})))),
    Case("resume-optimizer-shape", "train {recipe} --out {tmp}/run --resume",
         r"invalid optimizer\.pt \(parameter 0: exp_avg is torch\.float32 \[3\], the parameter is torch\.float32 \[",
         _run_copy(_optimizer_edit(lambda o: o["state"][0].update(exp_avg=torch.zeros(3))))),
    Case("resume-optimizer-lr-string", "train {recipe} --out {tmp}/run --resume",
         r"invalid optimizer\.pt \(parameter group 0: lr is 'fast'\)",
         _run_copy(_optimizer_edit(lambda o: o["param_groups"][0].update(lr="fast")))),
    Case("resume-manifest-outside", "train {recipe} --out {tmp}/run --resume",
         r"manifest\.json naming '\.\./\.\./\.\./precious\.txt', outside the checkpoint",
         _run_copy(_manifest_outside, rehash=False)),
    # -- code from a model directory never runs (each payload would create {tmp}/PWNED)
    Case("tokenizer-auto-map", "generate --model {tmp}/m --prompt hi",
         r"tokenizer .*m needs custom Python code from its directory \(auto_map in its config\); ponderlm never runs",
         _remote_tokenizer),
    Case("init-from-auto-map", f"{TRAIN} model.init_from={{tmp}}/evil",
         r"checkpoint .*evil needs custom Python code from its directory", _remote_config),
    # -- a config.json that does not describe its weights
    Case("config-fewer-layers", "generate --model {tmp}/m --prompt hi",
         r"weights in .*m hold 9 tensor\(s\) the config has no place for \(model\.layers\.1\.",
         _model_copy(_fewer_layers)),
    Case("config-method-vanilla", "generate --model {tmp}/m --prompt hi",
         r"config\.json in .*m says method 'vanilla', but the weights hold another method's parameters "
         r"\(method\.router\.", _model_copy(_config_edit(method="vanilla", max_steps=0))),
    Case("config-method-removed", "generate --model {tmp}/m --prompt hi",
         r"says method 'vanilla', but the weights hold another method's parameters",
         _model_copy(_config_drop("method", "max_steps"))),
    Case("config-vocab-string", "generate --model {tmp}/m --prompt hi",
         r"vocab_size must be a positive integer, got '4096'", _model_copy(_config_edit(vocab_size="4096"))),
    # -- data directories: checked before a run writes anything
    Case("data-token-id-past-vocab", f"{TRAIN} data.data_dir={{tmp}}/d",
         r"d/train_000\.bin holds token id 4196 at position 5, outside the vocabulary of 4096",
         _data_copy(_token_id("train_000.bin", 5, 4196))),
    Case("ppl-token-id-past-vocab", f"{PPL} --data {{tmp}}/d",
         r"the val split of the data holds token id 4196, outside the vocabulary of 4096",
         _data_copy(_token_id("val_000.bin", 3, 4196))),
    Case("data-tokenizer-damaged", f"{TRAIN} data.data_dir={{tmp}}/d",
         r"the tokenizer kept with the data in .*d does not load", _data_copy(lambda d: _truncate("tokenizer.json")(
             d / "tokenizer"))),
    Case("meta-shard-outside", f"{TRAIN} data.data_dir={{tmp}}/d",
         r"meta\.json names shard file '\.\./precious\.bin', which is not a file of",
         _data_copy(_meta_edit(lambda m: m["shards"]["train"][0].update(file="../precious.bin")))),
    # -- arguments that used to end in a traceback, an abort or unbounded memory
    Case("generate-seed-huge", f"{GEN} --seed 1180591620717411303424",
         r"--seed must be in \[0, 2\*\*64\), got 1180591620717411303424"),
    Case("plan-gpu-flops-zero", "plan {recipe} --gpu-flops 0", r"--gpu-flops must be a finite number > 0, got 0"),
    Case("plan-gpu-mem-nan", "plan {recipe} --gpu-mem-gb nan", r"--gpu-mem-gb must be a finite number > 0, got nan"),
    Case("synth-hop-weights-nan", "data synth --task hops --out {tmp}/s --hop-weights nan,1,1,1",
         r"--hop-weights needs 4 non-negative numbers with a positive sum, got \[nan, 1\.0, 1\.0, 1\.0\]"),
    Case("synth-seed-negative", "data synth --task hops --out {tmp}/s --seed -1",
         r"--seed must be in \[0, 2\*\*32\), got -1"),
    Case("synth-symbols-huge", "data synth --task hops --out {tmp}/s --symbols 10000000",
         r"vocabulary would have 100,000,010,000,007 tokens, more than the 65,536 a uint16 token id holds"),
    Case("tokenizer-vocab-huge", "tokenizer train --input {tmp}/t.txt --vocab-size 1000000000 --out {tmp}/tok",
         r"vocab_size must be at most 1,048,576 .*got 1,000,000,000", _text("t.txt")),
    # -- values that were silently replaced or ignored
    Case("ppl-seq-len-zero", "eval ppl --model {model} --max-batches 1 --seq-len 0 --no-progress",
         r"--seq-len must be >= 2 .*got 0"),
    Case("generate-depth-target-alone", f"{GEN} --depth-target 1",
         r"--depth-target is the target of a fixed-pruning --depth-policy .*this run's policy is learned"),
    Case("ppl-depth-target-alone", f"{PPL} --depth-target 1", r"--depth-target is the target of a fixed-pruning"),
    Case("analyze-alpha-empty", "analyze alpha --model {model} --alpha , --out {tmp}/a",
         r"argument --alpha: expected at least one number, got ','"),
    Case("prepare-num-proc-negative", "data prepare --input {tmp}/t.txt --out {tmp}/prep --num-proc -3",
         r"--num-proc must be >= 1, got -3", _text("t.txt")),
    # -- the command line itself
    Case("unknown-command", "trian", r"ponderlm: argument COMMAND: invalid choice: 'trian'"),
    Case("missing-required", "generate --prompt hi", r"the following arguments are required: --model"),
]
IDS = [c.id for c in CASES]
assert len(IDS) == len(set(IDS))

_SHARED: dict[str, Path] = {}


@pytest.fixture(scope="module", autouse=True)
def shared(tmp_path_factory, data_dir) -> dict[str, Path]:
    from helpers import single_thread, tiny_checkpoint

    from ponderlm.train import load_config, train

    _SHARED["model"] = tiny_checkpoint(tmp_path_factory.mktemp("bad_inputs_model"), train_steps=0)
    _SHARED["data"] = data_dir
    # A run of the table's recipe, trained in this process (its lock file then names this pid, so a resume case
    # that takes the lock again rewrites it byte-identically): one checkpoint at step 2, final/, metrics.
    root = tmp_path_factory.mktemp("bad_inputs_run")
    (root / "recipe.yaml").write_text(RECIPE.format(data=data_dir))
    with single_thread():
        train(load_config(str(root / "recipe.yaml"), [f"train.out={root / 'run'}"]))
    _SHARED["run"] = root / "run"
    return _SHARED


def snapshot(*roots: Path) -> dict[str, bytes]:
    """Every file and directory under `roots` (directories as b"<dir>") with its content."""
    found = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            found[str(p)] = b"<dir>" if p.is_dir() else p.read_bytes()
    return found


def run_cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bad_input(case: Case, tmp_path: Path, capsys, one_thread) -> None:
    if case.needs_cpu_only and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    if case.needs_module:
        pytest.importorskip(case.needs_module)
    if case.setup is not None:
        case.setup(tmp_path)
    (tmp_path / "recipe.yaml").write_text(RECIPE.format(data=_SHARED["data"]))
    fill = {"tmp": tmp_path, "model": _SHARED["model"], "data": _SHARED["data"], "recipe": tmp_path / "recipe.yaml",
            "sp": "\0"}
    argv = [a.replace("\0", " ") for a in case.argv.format(**fill).split()]
    before = snapshot(tmp_path, _SHARED["model"], _SHARED["data"])
    capsys.readouterr()  # drop what the setup printed
    code, err = run_cli(argv, capsys)
    assert code == 2, (code, err)
    assert len(err) == 1, err
    assert err[0].startswith("error: "), err
    assert re.search(case.error, err[0]), err[0]
    assert snapshot(tmp_path, _SHARED["model"], _SHARED["data"]) == before, "files were created, changed or removed"


def test_tokenizer_out_in_a_missing_parent_is_created(tmp_path: Path, capsys) -> None:
    """Not an error: the parents of `tokenizer train --out` are created (as `mkdir -p` would)."""
    _text("t.txt")(tmp_path)
    code, err = run_cli(["tokenizer", "train", "--input", str(tmp_path / "t.txt"), "--vocab-size", "300", "--out",
                         str(tmp_path / "a" / "b" / "tok")], capsys)
    assert code == 0, err
    assert (tmp_path / "a" / "b" / "tok" / "tokenizer.json").is_file()
