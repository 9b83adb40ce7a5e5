"""Run config loading/overrides/validation and the `ponderlm train` command line."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest
import yaml

from ponderlm.errors import PonderError
from ponderlm.train import config as run_config
from ponderlm.train.config import from_dict, load_config, parse_override, preset_names, preset_path
from ponderlm.train.schedule import lr_at, warmup_steps

REPO = Path(__file__).resolve().parents[1]
PRESETS = ("quickstart", "pythia-70m-ponderlm2", "pythia-160m-ponderlm2", "pythia-410m-ponderlm2",
           "pythia-1.4b-ponderlm2", "llama-410m-ponderlm2")


# ---------------------------------------------------------------------------------------------- YAML keys
def test_typo_key_names_key_and_suggestion(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  stesp: 10\n")
    with pytest.raises(PonderError, match=r"unknown config key 'train\.stesp'; did you mean 'train\.steps'\?"):
        load_config(path)


def test_typo_in_model_and_section_names():
    with pytest.raises(PonderError, match=r"'model\.hiden_size'.*'model\.hidden_size'"):
        from_dict({"model": {"hiden_size": 64}})
    with pytest.raises(PonderError, match=r"'optm'.*'optim'"):
        from_dict({"optm": {"lr": 1e-3}})


def test_missing_config_file(tmp_path):
    with pytest.raises(PonderError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_wrong_types_are_errors():
    with pytest.raises(PonderError, match=r"train\.steps must be int, got 'ten'"):
        from_dict({"train": {"steps": "ten"}})
    with pytest.raises(PonderError, match=r"log\.tensorboard must be bool"):
        from_dict({"log": {"tensorboard": 1}})
    with pytest.raises(PonderError, match=r"optim\.betas must have 2 items"):
        from_dict({"optim": {"betas": [0.9]}})
    with pytest.raises(PonderError, match=r"model\.hidden_size must be int"):
        from_dict({"model": {"hidden_size": 6.5}})


def test_values_are_validated():
    with pytest.raises(PonderError, match=r"dist\.backend must be one of ddp, fsdp2"):
        from_dict({"dist": {"backend": "horovod"}})
    with pytest.raises(PonderError, match=r"train\.grad_accum must be an integer >= 1"):
        from_dict({"train": {"grad_accum": 0}})
    with pytest.raises(PonderError, match=r"seq_len \(512\) exceeds model\.max_position_embeddings \(256\)"):
        from_dict({"model": {"max_position_embeddings": 256}, "data": {"seq_len": 512}})


# ---------------------------------------------------------------------------------------------- overrides
def test_overrides_parse_and_apply():
    assert parse_override("optim.lr=3e-4") == ("optim.lr", "3e-4")  # PyYAML 1.1 reads this as a string...
    cfg = from_dict({}, ["optim.lr=3e-4", "model.method=ponderlm3", "train.steps=200", "optim.betas=[0.8, 0.9]",
                         "train.out=runs/x=y", "data.inputs=[a.txt, b.txt]", "optim.warmup_steps=null"])
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)  # ...and the float field accepts it
    assert cfg.model["method"] == "ponderlm3"
    assert cfg.train.steps == 200
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.train.out == "runs/x=y"  # only the first '=' splits
    assert cfg.data.inputs == ["a.txt", "b.txt"]
    assert cfg.optim.warmup_steps is None


def test_switching_the_method_drops_the_recipes_options_for_its_own_method():
    """The quickstart recipe tunes PonderLM-3 (compute penalty, router init, tau); `model.method=...` must not
    carry those into another method's run, while options given as overrides and shared keys still apply."""
    quickstart = load_config(recipe="quickstart")
    model = quickstart.model
    assert (model["method"], model["lambda_steps"], model["tau"]) == ("ponderlm3", 0.05, 3e-3)
    same = load_config(None, ["model.max_steps=2"], recipe="quickstart")  # the recipe's own method: options stay
    assert same.model["lambda_steps"] == 0.05 and same.model["router_init"] == "uniform"
    other = load_config(None, ["model.method=adaponder", "model.halt_lambda=0.2"], recipe="quickstart")
    assert not {"lambda_steps", "router_init", "tau"} & set(other.model)
    assert other.model["halt_lambda"] == 0.2 and other.model["hidden_size"] == quickstart.model["hidden_size"]
    config = run_config.build_model_config(other)
    assert config.tau == 1e-4 and config.lambda_steps == 0.0  # the documented defaults
    assert load_config(None, ["model.method=latent_cot", "model.tau=0.01"], recipe="quickstart").model["tau"] == 0.01


def test_override_errors():
    with pytest.raises(PonderError, match=r"train\.steps must be int, got 2\.5"):
        from_dict({}, ["train.steps=2.5"])
    with pytest.raises(PonderError, match=r"'train\.stpes'.*'train\.steps'"):
        from_dict({}, ["train.stpes=2"])
    with pytest.raises(PonderError, match="section.key=value"):
        from_dict({}, ["train.steps"])
    with pytest.raises(PonderError, match="cannot parse"):
        from_dict({}, ["optim.betas=[0.9, 0.95"])
    with pytest.raises(PonderError, match="one level below"):
        from_dict({}, ["train.steps.x=1"])


def test_resolved_config_round_trips(tmp_path):
    cfg = from_dict({"name": "rt", "model": {"hidden_size": 64, "jacobi_iters_train": [1, 2]}}, ["optim.lr=5e-4"])
    run_config.save_yaml(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert again.identity_hash() == cfg.identity_hash()
    assert from_dict(cfg.to_dict(), ["train.steps=7"]).identity_hash() == cfg.identity_hash()  # loop settings
    assert from_dict(cfg.to_dict(), ["model.hidden_size=32"]).identity_hash() != cfg.identity_hash()


def test_schedule_warmup_then_cosine_to_min():
    w = warmup_steps(100, 0.02)
    assert w == 2
    lrs = [lr_at(s, lr=1.0, total_steps=100, warmup=w, min_lr_ratio=0.1) for s in range(100)]
    assert lrs[0] == 0.5 and lrs[1] == 1.0 and lrs[2] == 1.0
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    assert lrs[-1] == pytest.approx(0.1)
    assert warmup_steps(100, 0.02, warmup_steps=10) == 10


# ---------------------------------------------------------------------------------------------- provenance
def _declared_defaults(method: str) -> dict:
    """The documented defaults, read from the declarations themselves (PonderConfig's signature, the method's
    Options), independently of the run-config code under test."""
    import dataclasses
    import inspect

    from ponderlm.config import PonderConfig
    from ponderlm.registry import REGISTRY

    sig = inspect.signature(PonderConfig.__init__)
    found = {n: p.default for n, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}
    found.update({f.name: f.default for f in dataclasses.fields(REGISTRY[method].Options)})
    return found


@pytest.mark.parametrize("method", ["ponderlm3", "adaponder", "latent_cot", "ponderlm"])
def test_a_run_without_a_recipe_gets_the_documented_defaults(method):
    """No hidden recipe: without --recipe nothing but the method's declared defaults and the user's overrides."""
    cfg = load_config(None, [f"model.method={method}", "model.max_steps=1"])
    assert cfg.recipe is None
    built = run_config.build_model_config(cfg)
    for name, default in _declared_defaults(method).items():
        if name in ("method", "max_steps") or default is None:  # None: derived from other fields
            continue
        got = getattr(built, name)
        assert (list(got) if isinstance(got, tuple) else got) == (list(default) if isinstance(default, tuple)
                                                                else default), name
    assert built.max_steps == 1
    assert run_config.describe_differences(cfg).splitlines() == [
        f"{method} (no recipe): 1 setting differs from the documented defaults (docs/METHODS.md):",
        "  model.max_steps = 1  (default 0; override)"]


def test_a_named_recipe_gives_its_options_and_says_so():
    recipe = yaml.safe_load(preset_path("quickstart").read_text())
    cfg = load_config(None, ["train.steps=7"], recipe="quickstart")
    assert cfg.recipe == "quickstart"
    for key, value in recipe["model"].items():
        assert cfg.model[key] == value, key
    defaults = {**_declared_defaults(recipe["model"]["method"]), "vocab_size": None}
    expected = [f"model.{k}" for k, v in recipe["model"].items() if k != "method" and v != defaults[k]]
    sections = {"data": run_config.DataConfig(), "optim": run_config.OptimConfig(), "train": run_config.TrainConfig(),
                "log": run_config.LogConfig(), "dist": run_config.DistConfig()}
    for section, default in sections.items():
        for k, v in recipe.get(section, {}).items():
            if (list(v) if isinstance(v, tuple) else v) != (list(d) if isinstance(d := getattr(default, k), tuple)
                                                            else d) and f"{section}.{k}" != "train.steps":
                expected.append(f"{section}.{k}")
    expected.insert(expected.index("train.eval_every"), "train.steps")  # the override, in config order
    found = run_config.differences(cfg)
    assert [d.key for d in found] == expected
    assert {d.key: d.source for d in found} == {k: "override" if k == "train.steps" else "recipe quickstart"
                                                for k in expected}
    lines = run_config.describe_differences(cfg).splitlines()
    assert lines[0] == f"ponderlm3 (recipe quickstart): {len(expected)} settings differ from the documented " \
                       "defaults (docs/METHODS.md):"
    assert "  model.lambda_steps = 0.05  (default 0.0; recipe quickstart)" in lines
    assert "  train.steps = 7  (default 1000; override)" in lines and len(lines) == len(expected) + 1


def test_provenance_survives_the_saved_config(tmp_path):
    """--resume reloads config.yaml: the sources recorded at the start still say who set what; a value edited
    into the file by hand is attributed to the file."""
    cfg = load_config(None, ["model.max_steps=1", "model.method=ponderlm3"], recipe="quickstart")
    cfg.sources["model.method"] = "flag --method"
    run_config.save_yaml(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert text.startswith("# ponderlm3 (recipe quickstart): ")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg and run_config.differences(again) == run_config.differences(cfg)
    edited = yaml.safe_load(text)
    edited["optim"]["eps"] = 1e-6  # a key the recipe did not set
    (tmp_path / "edited.yaml").write_text(yaml.safe_dump(edited))
    by_hand = {d.key: d.source for d in run_config.differences(load_config(tmp_path / "edited.yaml"))}
    assert by_hand["optim.eps"] == f"file {tmp_path / 'edited.yaml'}"
    assert by_hand["model.lambda_steps"] == "recipe quickstart"


# ---------------------------------------------------------------------------------------------- presets
def test_presets_are_packaged_and_mirrored_at_repo_root():
    assert set(PRESETS) <= set(preset_names())
    for name in PRESETS:
        packaged = preset_path(name)
        assert packaged.parent.name == "configs" and packaged.parent.parent.name == "ponderlm"
        root_copy = REPO / "configs" / f"{name}.yaml"
        # configs/ at the repo root is a symlink to src/ponderlm/configs/ (the canonical, installed one).
        assert root_copy.is_file() and filecmp.cmp(packaged, root_copy, shallow=False), f"configs/{name}.yaml differs"


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load_and_build_a_valid_model_config(name):
    cfg = load_config(preset=name)
    model_config = run_config.build_model_config(cfg)
    assert cfg.data.seq_len <= model_config.max_position_embeddings
    if name != "quickstart":
        assert cfg.optim.betas == (0.9, 0.95) and cfg.optim.weight_decay == 0.1
        assert cfg.optim.min_lr_ratio == 0.1 and cfg.optim.warmup_frac == 0.02
        assert cfg.data.seq_len == 2048 and model_config.max_steps == 1 and model_config.method == "ponderlm2"
        # ~0.5M tokens per optimizer step whatever the GPU count (grad_accum follows global_batch_size).
        tokens = cfg.data.seq_len * cfg.train.global_batch_size
        assert 0.4e6 < tokens < 0.6e6
        assert cfg.dist.activation_checkpointing


def test_unknown_preset_suggests():
    with pytest.raises(PonderError, match="did you mean 'quickstart'"):
        load_config(preset="quickstar")


# ---------------------------------------------------------------------------------------------- CLI errors
def test_cli_errors_are_one_line_and_nonzero(tmp_path, capsys):
    from ponderlm.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"optim": {"lr": 1e-3, "wieght_decay": 0.1}}))
    cases = [
        (["train", str(bad)], "did you mean 'optim.weight_decay'?"),
        (["train", str(tmp_path / "missing.yaml")], "config file not found"),
        (["train", "train.steps=x"], "train.steps must be int"),
        (["train", "data.seq_len=100000"], "exceeds model.max_position_embeddings"),
        (["train", "--resume"], "--resume needs --out"),
        (["train", "a.yaml", "b.yaml"], "more than one CONFIG"),
        (["train", "--recipe", "nope"], "unknown recipe 'nope'"),
        (["train", "--preset", "nope"], "unknown recipe 'nope'"),  # the old spelling of --recipe
        (["train", "--out", ""], "train.out (--out) is empty"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (argv, err)


def test_cli_unwritable_out_dir_writes_nothing(tmp_path, capsys):
    from ponderlm.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["train", "--out", str(blocker / "run"), "--max-steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot write to output directory" in err and len(err.splitlines()) == 1
    assert blocker.read_text() == "not a directory"


def test_cli_refuses_to_overwrite_a_run(tmp_path, capsys):
    from ponderlm.cli import main

    (tmp_path / "checkpoints" / "step_000001").mkdir(parents=True)  # a complete checkpoint: work to keep
    (tmp_path / "checkpoints" / "step_000001" / "manifest.json").write_text("{}")
    (tmp_path / "config.yaml").write_text("name: x\n")
    assert main(["train", "--out", str(tmp_path), "--max-steps", "1"]) == 2
    assert "already holds a run (checkpoint at step 1); pass --resume" in capsys.readouterr().err
    assert (tmp_path / "config.yaml").read_text() == "name: x\n"


def test_cli_help_lists_presets(capsys):
    from ponderlm.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "quickstart" in out and "pythia-410m-ponderlm2" in out and "--max-steps" in out


# ---------------------------------------------------------------------------------------------- end to end
TINY = ["model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=2",
        "model.max_position_embeddings=64", "data.seq_len=32", "train.batch_size=2", "train.eval_every=2",
        "train.eval_batches=2", "train.save_every=3", "train.sample_tokens=4", "train.device=cpu"]


@pytest.fixture()
def corpus(tmp_path, monkeypatch) -> Path:
    """A small text file; data is auto-prepared into a private cache on first use."""
    import random

    monkeypatch.setenv("PONDERLM_CACHE", str(tmp_path / "cache"))
    rng = random.Random(0)
    words = "a cat and the dog saw one red bird sing near an old tree by the river at noon".split()
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(40)) for _ in range(120)))
    return path


def test_cli_end_to_end_run_directory(tmp_path, corpus, capsys):
    from ponderlm.cli import main
    from ponderlm.train import read_metrics

    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--method", "ponderlm2", "model.max_steps=1", f"data.inputs=[{corpus}]",
            "train.steps=4", *TINY]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "val perplexity" in printed and "unigram baseline" in printed and "sample" in printed

    assert {p.name for p in out.iterdir()} >= {"config.yaml", "metrics.jsonl", "checkpoints", "final", "tb",
                                                "summary.json"}
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["train"]["steps"] == 4 and resolved["model"]["method"] == "ponderlm2"
    assert resolved["data"]["inputs"] == [str(corpus)] and resolved["model"]["vocab_size"] == 4096
    train_rows, eval_rows = read_metrics(out, "train"), read_metrics(out, "eval")
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4] and [r["step"] for r in eval_rows] == [2, 4]
    assert all(r["executed_steps"] == 1.0 for r in train_rows)  # ponderlm2 with K=1 runs every latent step
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000003", "step_000004"]
    assert list((tmp_path / "cache" / "data").iterdir())  # prepared into the cache on first use

    final = out / "final"
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in final.iterdir()}
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ponderlm import PonderForCausalLM  # importing ponderlm registers the Auto* classes

    model = PonderForCausalLM.from_pretrained(final)
    assert model.config.max_steps == 1 and type(AutoModelForCausalLM.from_pretrained(final)) is PonderForCausalLM
    assert len(AutoTokenizer.from_pretrained(final)) == model.config.vocab_size
    summary = __import__("json").loads((out / "summary.json").read_text())
    assert summary["val_ppl"] == eval_rows[-1]["val_ppl"] and summary["avg_executed_steps"] == 1.0
    # no recipe: the settings record says so, with every differing key and who set it
    assert summary["settings"]["recipe"] is None and summary["settings"]["method"] == "ponderlm2"
    assert summary["settings"]["differs_from_defaults"]["model.max_steps"] == {"value": 1, "default": 0,
                                                                                "source": "override"}
    assert summary["settings"]["differs_from_defaults"]["model.vocab_size"]["source"] == "the data's tokenizer"
    assert summary["settings"]["differs_from_defaults"]["train.steps"]["source"] == "override"
    ev = summary["evaluation"]
    assert (ev["split"], ev["seq_len"], ev["batch_size"], ev["batches"]) == ("val", 32, 2, 2)
    assert ev["tokens"] == eval_rows[-1]["val_tokens"] and "31" not in ev["description"].split()
    assert 1.0 < summary["unigram_ppl"] < 4096 and summary["steps"] == 4 and summary["tokens_seen"] == 4 * 2 * 32


def test_cli_sigterm_checkpoints_then_resume_finishes(tmp_path, corpus, monkeypatch, capsys):
    import os
    import signal

    from ponderlm.cli import main
    from ponderlm.modeling import PonderForCausalLM

    original = PonderForCausalLM.set_training_progress

    def progress(self, step):  # SIGTERM arrives while step 2 runs
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, step)

    out = tmp_path / "run"
    base = ["train", "--out", str(out), f"data.inputs=[{corpus}]", "train.steps=5", *TINY]
    with monkeypatch.context() as m:
        m.setattr(PonderForCausalLM, "set_training_progress", progress)
        assert main(base) == 143
    assert "SIGTERM" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000002"]
    assert not (out / "final").exists()
    # --resume with no CONFIG reuses the run's config.yaml; overrides still apply.
    assert main(["train", "--out", str(out), "--resume", "train.steps=6"]) == 0
    assert (out / "final" / "model.safetensors").is_file()
    from ponderlm.train import read_metrics

    assert [r["step"] for r in read_metrics(out, "train")] == [1, 2, 3, 4, 5, 6]
