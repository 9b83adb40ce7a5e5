"""Self-contained checkpoints: remote code that loads where ponderlm cannot be imported, token ids, model card."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import NO_PONDERLM, tiny_model

from ponderlm import PonderForCausalLM
from ponderlm.hub import AUTO_MAP, ENTRY_FILE, import_closure, remote_code_files
from ponderlm.train import from_dict, train

# Runs in a fresh interpreter in which `import ponderlm` raises: the checkpoints must bring their own code.
BLOCKED = NO_PONDERLM + textwrap.dedent('''
    import json

    try:
        import ponderlm  # noqa: F401
        raise SystemExit("ponderlm is importable: the test would prove nothing")
    except ImportError:
        pass

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    out = {}
    ids = torch.tensor(json.loads(sys.argv[2]))
    for directory in sys.argv[3:]:
        model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True)
        res = {"class": f"{type(model).__module__}.{type(model).__name__}", "training": model.training,
               "logits": model(ids).logits.tolist()}
        gen = model.generate(ids, max_new_tokens=6, return_dict_in_generate=True)
        res["sequences"], res["steps"] = gen.sequences.tolist(), gen.executed_steps.tolist()
        # A model loaded from remote code re-saves that code: the copy loads too and gives the same logits.
        model.save_pretrained(directory + "-resaved")
        again = AutoModelForCausalLM.from_pretrained(directory + "-resaved", trust_remote_code=True)
        res["resaved_logits"] = again(ids).logits.tolist()
        try:
            tok = AutoTokenizer.from_pretrained(directory)
            res["padding_side"] = tok.padding_side
        except Exception:  # no tokenizer in this directory
            pass
        out[directory] = res
    out["ponderlm_modules"] = sorted(m for m in sys.modules if m == "ponderlm" or m.startswith("ponderlm."))
    with open(sys.argv[1], "w") as f:
        json.dump(out, f)
''')


def run_without_ponderlm(tmp_path: Path, ids: torch.Tensor, *dirs: Path) -> dict:
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf_modules"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error", "PYTHONPATH": ""}
    script = tmp_path / "blocked.py"
    script.write_text(BLOCKED)
    result = tmp_path / "blocked.json"
    proc = subprocess.run([sys.executable, str(script), str(result), json.dumps(ids.tolist()), *map(str, dirs)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(result.read_text())


def tiny_run(out: Path, data_dir: Path):
    return from_dict({
        "name": "hubtest",
        "model": {"method": "ponderlm3", "max_steps": 2, "hidden_size": 32, "num_hidden_layers": 2,
                  "num_attention_heads": 2, "max_position_embeddings": 64, "tau": 0.2},
        "data": {"data_dir": str(data_dir), "seq_len": 32},
        "train": {"steps": 2, "batch_size": 2, "eval_every": 2, "eval_batches": 1, "save_every": 100,
                  "out": str(out), "sample_tokens": 0, "device": "cpu"},
        "log": {"tensorboard": False}})


def test_final_dir_is_a_complete_hf_checkpoint_that_loads_without_ponderlm(tmp_path, data_dir, one_thread):
    from transformers import AutoTokenizer, GenerationConfig

    result = train(tiny_run(tmp_path / "run", data_dir))
    final = tmp_path / "run" / "final"
    tok = AutoTokenizer.from_pretrained(final)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    config = json.loads((final / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (eos, eos, eos)
    gen_cfg = GenerationConfig.from_pretrained(final)
    assert (gen_cfg.bos_token_id, gen_cfg.eos_token_id, gen_cfg.pad_token_id) == (eos, eos, eos)
    assert tok.padding_side == "left"
    card = (final / "README.md").read_text()
    for needle in ("`ponderlm3`", "| K (max additional steps per token) | 2 |",
                   "| tau (pruning / halting threshold) | 0.2 |", "| alpha (router bias at inference) | 0 |",
                   f"| tokens trained | {result.tokens_seen:,} |",
                   str(data_dir.parent / "corpus.txt")):
        assert needle in card, needle
    # The card's perplexity is the run's summary.json number with the conditions it was measured under.
    summary = json.loads((result.out_dir / "summary.json").read_text())
    assert summary["val_ppl"] == result.val_ppl
    assert f"| validation perplexity | {summary['val_ppl']:.3f} on {summary['evaluation']['description']} |" in card

    # A second method whose decode path differs (halting gates, KV reuse), saved by plain save_pretrained.
    ada = tiny_model("adaponder", max_steps=2)
    ada.save_pretrained(tmp_path / "ada")
    ids = torch.tensor([[5, 17, 3, 44, 9, 21, 8, 30]])
    remote = run_without_ponderlm(tmp_path, ids, final, tmp_path / "ada")
    assert remote["ponderlm_modules"] == []
    for directory, model in ((final, PonderForCausalLM.from_pretrained(final).eval()), (tmp_path / "ada", ada)):
        res = remote[str(directory)]
        assert res["class"].startswith("transformers_modules.") and not res["training"]
        with torch.no_grad():
            ref = model(ids).logits
        torch.testing.assert_close(torch.tensor(res["logits"]), ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(torch.tensor(res["resaved_logits"]), ref, rtol=0, atol=1e-5)
        out = model.generate(ids, max_new_tokens=6, return_dict_in_generate=True)
        assert res["sequences"] == out.sequences.tolist()
        assert res["steps"] == out.executed_steps.tolist()
    assert remote[str(final)]["padding_side"] == "left"


def test_bundle_is_generated_from_the_package():
    files = remote_code_files()
    modules = import_closure()
    # The closure reaches everything decoding and loading need, including lazily imported modules.
    for needed in ("ponderlm.modeling", "ponderlm.config", "ponderlm.inference.generate", "ponderlm.methods.adaponder",
                   "ponderlm.backbone.cache", "ponderlm.hub"):
        assert needed in modules
    assert not any(m.startswith(("ponderlm.train", "ponderlm.eval", "ponderlm.cli", "ponderlm.data")) for m in modules)
    assert set(files) == {ENTRY_FILE} | {"ponderlm__" + "__".join(m.split(".")[1:]) + ".py" for m in modules}
    for name, text in files.items():
        for node in ast.walk(ast.parse(text)):  # every import of the package was made relative to the bundle
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert not node.module.startswith("ponderlm"), (name, node.module)
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("ponderlm") for a in node.names), name
    # Source identical to the package's apart from the import lines: no hand-maintained copy.
    src = (Path(__file__).resolve().parents[1] / "src" / "ponderlm" / "backbone" / "packing.py").read_text()
    assert "import ponderlm" not in src and "from ponderlm" not in src  # a module without package imports
    assert files["ponderlm__backbone__packing.py"] == src
    lines = files["ponderlm__modeling.py"].splitlines()
    assert not [line for line in lines if line.startswith(("AutoConfig.register", "AutoModelForCausalLM.register"))]


def test_remote_code_is_not_registered_over_the_installed_package(tmp_path):
    # With ponderlm imported, Auto* keeps using the installed classes unless trust_remote_code is asked for.
    from transformers import AutoModelForCausalLM

    tiny_model("vanilla").save_pretrained(tmp_path / "m")
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "m")) is PonderForCausalLM


@pytest.mark.parametrize("bad", ["import ponderlm.config\n", "x = 1; from ponderlm.config import PonderConfig\n"])
def test_unbundlable_imports_are_reported(bad):
    from ponderlm.hub import _rewrite

    with pytest.raises(ValueError, match="cannot be bundled"):
        _rewrite("ponderlm.fake", bad)
