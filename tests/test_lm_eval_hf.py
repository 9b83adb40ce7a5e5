"""lm-eval on the user's own tasks (--include-path, task YAML paths), generate_until with lm-eval's stopping
criteria, and `lm_eval --model hf pretrained=DIR,trust_remote_code=True` where ponderlm cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import single_thread
from test_hub import BLOCKED
from test_lm_eval import needs_lm_eval

from ponderlm.cli import main

TASK = textwrap.dedent("""\
    task: my_words
    dataset_path: json
    dataset_kwargs:
      data_files:
        test: "{data}"
    output_type: generate_until
    test_split: test
    doc_to_text: "{{{{prompt}}}}"
    doc_to_target: "{{{{answer}}}}"
    generation_kwargs:
      until: [".", "\\n"]
      max_gen_toks: 12
      do_sample: false
    metric_list:
      - metric: exact_match
        aggregation: mean
        higher_is_better: true
    metadata:
      version: 1.0
    """)
PROMPTS = ["The cat sat on the", "Once upon a time there", "It was a dark and", "She opened the door and"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PONDERLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    with single_thread():
        yield


def user_task(root: Path) -> Path:
    tasks = root / "my_tasks"
    tasks.mkdir()
    with open(tasks / "words.jsonl", "w") as f:
        for p in PROMPTS:
            f.write(json.dumps({"prompt": p, "answer": " mat"}) + "\n")
    (tasks / "my_words.yaml").write_text(TASK.format(data=tasks / "words.jsonl"))
    return tasks


@needs_lm_eval
def test_user_task_by_include_path_and_by_yaml_path(checkpoint, tmp_path, capsys):
    tasks = user_task(tmp_path)
    for how in (["--include-path", str(tasks), "--tasks", "my_words"], ["--tasks", str(tasks / "my_words.yaml")]):
        out = tmp_path / "results.json"
        code = main(["lm-eval", "--model", str(checkpoint), *how, "--limit", "3", "--batch-size", "2",
                     "--bootstrap-iters", "0", "--output", str(out)])
        assert code == 0, capsys.readouterr().err
        results = json.loads(out.read_text())
        assert results["n-samples"]["my_words"]["effective"] == 3
        assert 0.0 <= results["results"]["my_words"]["exact_match,none"] <= 1.0
    code = main(["lm-eval", "--model", str(checkpoint), "--tasks", str(tasks / "nope.yaml")])
    assert code == 2 and "task file" in capsys.readouterr().err


@needs_lm_eval
def test_generate_until_stops_where_lm_eval_says(checkpoint):
    """lm-eval's own HFLM (its stopping criteria, left-padded batches) on our model == our generate, cut at the
    first stop sequence, prompt by prompt."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from ponderlm.eval.perplexity import load_model

    model, tok = load_model(checkpoint, "cpu")
    model.config.tau = 0.2  # mixed depths on the decode path
    until = [" the", "."]
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4, backend="causal")
    requests = [Instance(request_type="generate_until", doc={}, arguments=(p, {"until": until, "max_gen_toks": 10,
                                                                               "do_sample": False}), idx=0)
                for p in PROMPTS]
    got = lm.generate_until(requests)
    stopped_early = 0
    for prompt, text in zip(PROMPTS, got):
        ids = tok(prompt, return_tensors="pt").input_ids
        new = model.generate(ids, max_new_tokens=10, do_sample=False)[0, ids.shape[1]:]
        full = tok.decode(new, skip_special_tokens=True)
        cut = min((full.index(s) for s in until if s in full), default=len(full))
        stopped_early += cut < len(full)
        assert text == full[:cut], prompt
    assert stopped_early >= 1, "no prompt hit a stop sequence: the test proves nothing about stopping"


@needs_lm_eval
def test_lm_eval_hf_model_with_remote_code_and_no_ponderlm(checkpoint, tmp_path):
    """`lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True` in a Python where ponderlm cannot be
    imported gives the same generations as lm-eval on the installed package."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from ponderlm.eval.perplexity import load_model

    tasks = user_task(tmp_path)
    model, tok = load_model(checkpoint, "cpu")
    local = lm_eval.simple_evaluate(model=HFLM(pretrained=model, tokenizer=tok, batch_size=2), tasks=["my_words"],
                                    task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
                                    limit=3, bootstrap_iters=0, log_samples=True)
    script = tmp_path / "remote_lm_eval.py"
    script.write_text(BLOCKED.split("import torch\n")[0] + textwrap.dedent(f"""
        import json, lm_eval
        from lm_eval.tasks import TaskManager
        res = lm_eval.simple_evaluate(model="hf", model_args="pretrained={checkpoint},trust_remote_code=True,"
                                      "batch_size=2,device=cpu", tasks=["my_words"], limit=3, bootstrap_iters=0,
                                      task_manager=TaskManager(include_path="{tasks}", include_defaults=False),
                                      log_samples=True)
        out = {{"resps": [s["resps"] for s in res["samples"]["my_words"]],
               "ponderlm": sorted(m for m in sys.modules if m.split(".")[0] == "ponderlm")}}
        open("{tmp_path / 'remote.json'}", "w").write(json.dumps(out))
        """))
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf_modules"), "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    remote = json.loads((tmp_path / "remote.json").read_text())
    assert remote["ponderlm"] == []
    assert remote["resps"] == [s["resps"] for s in local["samples"]["my_words"]]
