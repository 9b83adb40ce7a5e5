"""What `complete_checkpoint` (a training run's `final/`) gives Hugging Face users: a tokenizer whose
`model_max_length` is the model's position limit, and a model card with a license whose code snippet runs as
written in a fresh Python where ponderlm is not installed, without a prompt and without a warning."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
from helpers import NO_PONDERLM
from transformers import AutoTokenizer

from ponderlm import PonderConfig, PonderForCausalLM
from ponderlm.data.tokenizer import load_tokenizer
from ponderlm.hub import complete_checkpoint

# Prepended to the card's snippet: `import ponderlm` fails, so the checkpoint's own code must do everything.
SNIPPET_PRELUDE = NO_PONDERLM + "import torch\ntorch.set_num_threads(1)\n"


@pytest.fixture(scope="module", params=["ponderlm3", "vanilla"])
def checkpoint(request, tmp_path_factory):
    tokenizer = load_tokenizer("default")
    method = request.param
    config = PonderConfig(method=method, max_steps=0 if method == "vanilla" else 2, vocab_size=len(tokenizer),
                          hidden_size=32, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=48)
    torch.manual_seed(0)
    model = PonderForCausalLM(config)
    out = tmp_path_factory.mktemp(f"final-{method}")
    model.save_pretrained(out)
    complete_checkpoint(out, model, tokenizer, {"name": "card test"})
    return out


def test_tokenizer_length_limit_is_the_models(checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=True)
    assert tokenizer.model_max_length == 48
    ids = tokenizer("word " * 200, truncation=True).input_ids
    assert len(ids) == 48


def test_card_declares_the_license(checkpoint):
    card = (checkpoint / "README.md").read_text(encoding="utf-8")
    header = card.split("---\n")[1]
    assert "license: apache-2.0" in header.splitlines()


def test_card_snippet_runs_in_a_fresh_process_without_prompt_or_warning(checkpoint, tmp_path):
    card = (checkpoint / "README.md").read_text(encoding="utf-8")
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1).replace("this/dir", str(checkpoint))
    script = tmp_path / "snippet.py"
    script.write_text(SNIPPET_PRELUDE + snippet, encoding="utf-8")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf_modules"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": "",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}
    env.pop("TRANSFORMERS_VERBOSITY", None)  # transformers' default level: its warnings must show up here
    # stdin closed: transformers' trust_remote_code question would read EOF and fail instead of waiting 15 s.
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tensor(" in proc.stdout  # the snippet prints the text and executed_steps
    output = proc.stdout + proc.stderr
    assert "Do you wish to run the custom code" not in output
    noise = [line for line in proc.stderr.splitlines() if line.strip()]
    assert not noise, noise
