"""`ponderlm lm-eval` takes lm-eval's own spellings (--include_path, --output_path / -o, --log_samples / -s),
keeps the old dashed ones, and lays out --output_path like lm-eval (issue 28 item 9)."""

from __future__ import annotations

import json

import pytest
from helpers import single_thread
from test_lm_eval import needs_lm_eval

from ponderlm.cli import build_parser, main
from ponderlm.eval.lm_eval_adapter import write_outputs


def _parse(*flags: str):
    return build_parser().parse_args(["lm-eval", "--model", "m", "--tasks", "t", *flags])


def test_lm_eval_spellings_and_old_aliases():
    args = _parse("--include_path", "a", "--include-path", "b", "--output_path", "r.json", "--log_samples")
    assert args.include_path == ["a", "b"] and args.output_path == "r.json" and args.log_samples
    for flag in ("-o", "--output", "--output-path"):
        assert _parse(flag, "out").output_path == "out"
    assert _parse("-s").log_samples and not _parse().log_samples
    args = _parse("--batch_size", "3", "--num_fewshot", "2", "--bootstrap_iters", "0")
    assert (args.batch_size, args.num_fewshot, args.bootstrap_iters) == (3, 2, 0)
    args = _parse("--batch-size", "5", "--num-fewshot", "1", "--bootstrap-iters", "7")
    assert (args.batch_size, args.num_fewshot, args.bootstrap_iters) == (5, 1, 7)


def test_log_samples_needs_an_output_path(capsys):
    assert main(["lm-eval", "--model", "missing", "--tasks", "ponder_cloze", "--log_samples"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--output_path" in err[0]


RESULTS = {"results": {"t1": {"acc,none": 0.5}}, "ponderlm": {"tau": 0.1},
           "samples": {"t1": [{"doc_id": 0, "resps": [[["-1.5", True]]]}, {"doc_id": 1, "resps": []}]}}


def test_output_directory_is_laid_out_like_lm_eval(tmp_path):
    written = write_outputs(RESULTS, tmp_path / "out", "runs/p3/final")
    results, samples = written
    # lm-eval: <output_path>/<model name with / replaced by __>/results_<time>.json, samples_<task>_<time>.jsonl
    assert results.parent == tmp_path / "out" / "runs__p3__final"
    assert results.name.startswith("results_") and results.suffix == ".json"
    assert samples.parent == results.parent and samples.name.startswith("samples_t1_") and samples.suffix == ".jsonl"
    assert samples.name.removeprefix("samples_t1_") == results.name.removeprefix("results_") + "l"
    saved = json.loads(results.read_text())
    assert "samples" not in saved and saved["results"]["t1"]["acc,none"] == 0.5
    assert [json.loads(line)["doc_id"] for line in samples.read_text().splitlines()] == [0, 1]


def test_output_json_path_is_the_results_file(tmp_path):
    target = tmp_path / "sub" / "lm.json"
    written = write_outputs({k: v for k, v in RESULTS.items() if k != "samples"}, target, "m")
    assert written == [target] and json.loads(target.read_text())["ponderlm"] == {"tau": 0.1}


@needs_lm_eval
def test_lm_eval_writes_results_and_samples(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PONDERLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    out = tmp_path / "lm"
    with single_thread():
        code = main(["lm-eval", "--model", str(checkpoint), "--tasks", "ponder_cloze", "--limit", "3",
                     "--batch-size", "3", "--bootstrap-iters", "0", "--output_path", str(out), "--log_samples"])
    assert code == 0, capsys.readouterr().err
    (folder,) = out.iterdir()
    (results,) = folder.glob("results_*.json")
    (samples,) = folder.glob("samples_ponder_cloze_*.jsonl")
    assert json.loads(results.read_text())["n-samples"]["ponder_cloze"]["effective"] == 3
    docs = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(docs) == 3 and all("resps" in d and "doc_id" in d for d in docs)


def test_include_path_error_names_lm_evals_flag(tmp_path):
    from ponderlm.errors import PonderError
    from ponderlm.eval.lm_eval_adapter import resolve_tasks

    with pytest.raises(PonderError, match="^--include_path .*: not a directory$"):
        resolve_tasks(["x"], [str(tmp_path / "missing")])
