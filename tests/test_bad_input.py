"""Bad input through the real CLI: every user mistake exits 2 with `aptune: error:` + `fix:`, no traceback.

Table-driven: each case builds its broken input under tmp_path and names the words the error
must contain. Runs that must succeed (garbled rows, --overwrite, replacing an earlier run) use
the tiny model and tiny data.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from aptune.cli import app
from tests.helpers import write_mnli, write_sst2

RUNNER = CliRunner()
FAST = ["--epochs", "1", "--eval-every", "5", "--quiet", "--batch-size", "16"]


pytestmark = pytest.mark.usefixtures("one_thread", "no_env_data_dir")


def invoke(*args):
    return RUNNER.invoke(app, [str(a) for a in args])


def assert_user_error(result, *needles: str) -> None:
    """Exit 2, `aptune: error: <problem naming needles>`, a `fix:` line, no traceback."""
    where = f"exit={result.exit_code}\nstdout={result.stdout!r}\nstderr={result.stderr!r}"
    assert result.exit_code == 2, where
    # An uncaught exception would be held in result.exception (exit 1), not a SystemExit(2).
    assert result.exception is None or isinstance(result.exception, SystemExit), where
    assert "Traceback" not in result.output, where
    err = result.stderr
    assert err.startswith("aptune: error: "), where
    problem = err.splitlines()[0]
    for needle in needles:
        assert needle in problem, f"{needle!r} not in {problem!r}"
    assert any(line.strip().startswith("fix: ") and len(line.strip()) > len("fix: ")
               for line in err.splitlines()[1:]), where


def assert_nothing_finished(out: Path) -> None:
    """A failed train leaves no finished-looking run and no partial folder."""
    assert not (out / "aptune_run.json").exists()
    assert not (out / "metrics.json").exists()
    parent = out.parent if out.parent.is_dir() else out.parent.parent
    assert not list(parent.glob(f".{out.name}.partial-*")), list(parent.iterdir())
    assert not list(parent.rglob("*.partial-*"))


def assert_success(result) -> None:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.output


def printed(result, prefix: str) -> str:
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith(prefix)]
    assert len(lines) == 1, result.stdout
    return lines[0]


# -- inputs --------------------------------------------------------------------------------------
def good_data(tmp: Path) -> Path:
    data = tmp / "data"
    write_sst2(data, n_train=40, n_dev=16)
    write_mnli(data, n_train=40, n_dev=16)
    return data


def tsv(data: Path, text: str) -> Path:
    (data / "sst2" / "train.tsv").write_text(text)
    return data


def jsonl(data: Path, rows: list) -> Path:
    path = data / "mnli" / "train_sample_10k.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return data


def data_missing_train(tmp):
    data = good_data(tmp)
    (data / "sst2" / "train.tsv").unlink()
    return ["--data-dir", data]


def data_dir_absent(tmp):
    return ["--data-dir", tmp / "no" / "such" / "data"]


def tsv_wrong_header(tmp):
    return ["--data-dir", tsv(good_data(tmp), "text\tlabel\nsome good film\t1\n")]


def tsv_empty(tmp):
    return ["--data-dir", tsv(good_data(tmp), "")]


def jsonl_wrong_keys(tmp):
    rows = [{"sentence1": "a man runs.", "sentence2": "a man moves", "gold_label": "entailment"}] * 5
    return ["--task", "mnli", "--data-dir", jsonl(good_data(tmp), rows)]


def jsonl_label_without_texts(tmp):
    rows = [{"text": "a man runs.", "label": "entailment"}] * 5
    return ["--task", "mnli", "--data-dir", jsonl(good_data(tmp), rows)]


def tsv_binary(tmp):
    data = good_data(tmp)
    (data / "sst2" / "train.tsv").write_bytes(bytes(range(256)) * 12)
    return ["--data-dir", data]


def tsv_not_utf8(tmp):
    data = good_data(tmp)
    (data / "sst2" / "train.tsv").write_bytes("sentence\tlabel\nun film très drôle\t1\n".encode("latin-1"))
    return ["--data-dir", data]


def jsonl_truncated(tmp):
    data = jsonl(good_data(tmp), [{"premise": "a man runs.", "hypothesis": "a man moves",
                                   "label": "entailment"}] * 5)
    path = data / "mnli" / "train_sample_10k.jsonl"
    path.write_text(path.read_text() + '{"premise": "a dog sle')  # the copy stopped mid-line
    return ["--task", "mnli", "--data-dir", data]


def sst2_label_7(tmp):
    return ["--data-dir", tsv(good_data(tmp), "sentence\tlabel\na good film\t1\na dull film\t7\n")]


def mnli_label_maybe(tmp):
    rows = [{"premise": "a man runs.", "hypothesis": "a man moves", "label": "entailment"},
            {"premise": "a dog sleeps.", "hypothesis": "a dog runs", "label": "maybe"}]
    return ["--task", "mnli", "--data-dir", jsonl(good_data(tmp), rows)]


def gpt2_model(tmp):
    from transformers import GPT2Config, GPT2Model

    folder = tmp / "gpt2"
    # bos/eos inside the 50-token vocab, or transformers itself warns about the config on stderr
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, bos_token_id=0, eos_token_id=0)
    GPT2Model(config).save_pretrained(folder)
    return ["--model", folder]


def t5_model(tmp):
    from transformers import T5Config, T5ForConditionalGeneration

    folder = tmp / "t5"
    config = T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2,
                      decoder_start_token_id=0)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    return ["--model", folder]


def model_without_config(tmp):
    folder = tmp / "empty-model"
    folder.mkdir()
    (folder / "README.md").write_text("not a model\n")
    return ["--model", folder]


def output_is_file(tmp):
    (tmp / "out").write_text("a file\n")
    return []


def output_under_file(tmp):
    (tmp / "afile").write_text("a file\n")
    return ["--output-dir", tmp / "afile" / "out"]


def output_unrelated(tmp):
    (tmp / "out").mkdir()
    (tmp / "out" / "thesis.tex").write_text("precious\n")
    return []


def recipe_missing(tmp):
    return ["--recipe", tmp / "no-such-recipe.yaml"]


def recipe_unknown_key(tmp):
    (tmp / "r.yaml").write_text("task: sst2\nlearning_rate: 0.1\n")
    return ["--recipe", tmp / "r.yaml"]


def flags(*args):
    return lambda tmp: list(args)


TRAIN_CASES = [
    # (id, builder(tmp) -> extra args overriding the defaults, words the problem line must contain)
    ("missing-train-file", data_missing_train, ["sst2 train file not found", "train.tsv"]),
    ("data-dir-absent", data_dir_absent, ["data directory", "does not exist"]),
    ("tsv-wrong-header", tsv_wrong_header, ["lacks the column(s) sentence", "header: text, label"]),
    ("tsv-empty", tsv_empty, ["train.tsv is empty"]),
    ("jsonl-wrong-keys", jsonl_wrong_keys, ["rows lack the keys premise, hypothesis, label"]),
    ("jsonl-label-but-no-texts", jsonl_label_without_texts, ["rows lack the keys", "found: text, label"]),
    ("tsv-binary", tsv_binary, ["train.tsv is not UTF-8 text"]),
    ("tsv-not-utf8", tsv_not_utf8, ["train.tsv is not UTF-8 text"]),
    ("jsonl-truncated", jsonl_truncated, ["ends in the middle of a JSON line (line 6)", "truncated"]),
    ("sst2-label-7", sst2_label_7, ["outside sst2's label set", "'7' (1)"]),
    ("mnli-label-maybe", mnli_label_maybe, ["outside mnli's label set", "'maybe' (1)"]),
    ("unknown-task", flags("--task", "qnli"), ["unknown task 'qnli'"]),
    ("unknown-method", flags("--method", "prune"), ["unknown method 'prune'"]),
    ("model-path-absent", flags("--model", "./no/such/model"), ["./no/such/model does not exist"]),
    ("model-no-config", model_without_config, ["has no config.json"]),
    ("model-family-gpt2", gpt2_model, ["model family 'gpt2' is not supported"]),
    ("t5-for-squad", lambda tmp: [*t5_model(tmp), "--task", "squad_v2"],
     ["squad_v2 has no text-to-text form"]),
    ("batch-size-0", flags("--batch-size", "0"), ["--batch-size must be positive, got 0"]),
    ("batch-size-neg", flags("--batch-size", "-4"), ["--batch-size must be positive, got -4"]),
    ("epochs-0", flags("--epochs", "0"), ["--epochs must be positive"]),
    ("epochs-neg", flags("--epochs", "-1"), ["--epochs must be positive"]),
    ("lr-0", flags("--lr", "0"), ["--lr must be positive"]),
    ("max-train-samples-0", flags("--max-train-samples", "0"), ["--max-train-samples must be positive"]),
    ("output-is-file", output_is_file, ["exists and is a file"]),
    ("output-under-file", output_under_file, ["cannot write to", "afile"]),
    ("output-unrelated-no-overwrite", output_unrelated, ["exists and is not an aptune run"]),
    ("recipe-missing", recipe_missing, ["recipe", "not found"]),
    ("recipe-unknown-key", recipe_unknown_key, ["unknown key(s): learning_rate"]),
    ("lora-prune-base-absent", flags("--method", "lora-prune", "--base-run", "./no/such/run"),
     ["--base-run", "is not a finished aptune run"]),
    ("lora-prune-constraint", flags("--method", "lora-prune", "--mt-constraint", "flops"),
     ["--mt-constraint must be one of params, mac"]),
    ("cofi-cannot-reach-size",
     flags("--method", "cofi", "--cofi-pruning-epochs", "4", "--cofi-ft-epochs", "2"),
     ["CoFi cannot reach --sparsity 0.6", "100 pre-pruning steps"]),
    ("cofi-teacher-absent", flags("--method", "cofi", "--cofi-teacher-path", "./no/such/run"),
     ["--cofi-teacher-path", "is not a finished aptune run"]),
    ("cofi-existing-layers", flags("--method", "cofi", "--cofi-existing-layers", "all"),
     ["--cofi-existing-layers must be one of"]),
]


def train_args(tmp: Path, model: Path, data: Path, extra: list) -> tuple[list, Path]:
    """Defaults for a tiny run; `extra` (flag, value pairs and --quiet style flags) overrides them."""
    defaults = {"--task": "sst2", "--method": "ft", "--model": model, "--data-dir": data,
                "--output-dir": tmp / "out", "--epochs": "1", "--eval-every": "5",
                "--batch-size": "16"}
    i = 0
    while i < len(extra):
        defaults[extra[i]] = extra[i + 1]
        i += 2
    args = ["train", "--quiet"]
    for k, v in defaults.items():
        args += [k, v]
    return args, Path(defaults["--output-dir"])


@pytest.mark.parametrize("build, needles", [c[1:] for c in TRAIN_CASES],
                         ids=[c[0] for c in TRAIN_CASES])
def test_train_refuses_bad_input(tmp_path, tiny_bert_dir, tiny_data_dir, build, needles):
    args, out = train_args(tmp_path, tiny_bert_dir, tiny_data_dir, build(tmp_path))
    before = sorted(p.name for p in out.iterdir()) if out.is_dir() else None
    result = invoke(*args)
    assert_user_error(result, *needles)
    assert_nothing_finished(out)
    if before is not None:  # a folder that was there is left exactly as it was
        assert sorted(p.name for p in out.iterdir()) == before
    assert "result:" not in result.stdout


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root ignores permission bits")
def test_train_refuses_read_only_parent(tmp_path, tiny_bert_dir, tiny_data_dir):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        args, out = train_args(tmp_path, tiny_bert_dir, tiny_data_dir,
                               ["--output-dir", locked / "out"])
        assert_user_error(invoke(*args), "cannot write to")
        assert not out.exists()
    finally:
        locked.chmod(0o700)


def test_a_full_disk_while_saving_is_one_clear_error(tmp_path, tiny_bert_dir, tiny_data_dir, monkeypatch):
    import errno

    import aptune.pipeline

    def disk_full(model, folder, tokenizer=None):
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(folder) / "model.safetensors"))

    monkeypatch.setattr(aptune.pipeline, "save_pruned", disk_full)
    args, out = train_args(tmp_path, tiny_bert_dir, tiny_data_dir, [])
    assert_user_error(invoke(*args), "the disk is full while writing", "model.safetensors")
    assert not out.exists()
    # what stays is the unfinished folder with its last checkpoint: free space, then --resume
    unfinished = out.with_name(f".{out.name}.partial-run")
    assert (unfinished / "checkpoint" / "state.json").is_file()
    assert not (unfinished / "aptune_run.json").exists() and not (unfinished / "model").exists()


# -- the real console script: nothing on stderr but the two lines --------------------------------
SUBPROCESS_CASES = [
    ("unknown-task", flags("--task", "qnli"), "unknown task 'qnli'"),
    ("model-family-gpt2", gpt2_model, "model family 'gpt2' is not supported"),
]


@pytest.mark.skipif(shutil.which("aptune") is None, reason="console script not on PATH")
@pytest.mark.parametrize("build, needle", [c[1:] for c in SUBPROCESS_CASES],
                         ids=[c[0] for c in SUBPROCESS_CASES])
def test_console_script_prints_two_lines(tmp_path, tiny_bert_dir, tiny_data_dir, build, needle):
    args, out = train_args(tmp_path, tiny_bert_dir, tiny_data_dir, build(tmp_path))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("APTUNE_DATA_DIR", None)
    proc = subprocess.run(["aptune", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("aptune: error: ") and needle in lines[0], proc.stderr
    assert lines[1].strip().startswith("fix: "), proc.stderr
    assert len(lines) == 2, proc.stderr
    assert_nothing_finished(out)


# -- garbled rows are skipped and counted, not fatal ---------------------------------------------
def garble_sst2(data: Path) -> tuple[list, str]:
    path = data / "sst2" / "train.tsv"
    lines = path.read_text().splitlines()
    bad = ["no tab in this row at all",      # garbled: one column
           "too\tmany\ttabs",                 # garbled: three columns
           "\t1",                              # empty text
           "   \t0",                           # empty text (blank)
           "a fine film\t"]                    # missing label
    path.write_text("\n".join(lines[:50] + bad[:3] + lines[50:120] + bad[3:] + lines[120:]) + "\n")
    return ["--task", "sst2"], "skipped 5 bad rows (2 garbled, 2 empty text, 1 missing label)"


def garble_mnli(data: Path) -> tuple[list, str]:
    path = data / "mnli" / "train_sample_10k.jsonl"
    lines = path.read_text().splitlines()
    bad = ['{"premise": "a man runs", "hypothesis": ',                         # broken JSON
           '["a list", "not an object"]',                                     # not an object
           json.dumps({"premise": "a man runs.", "hypothesis": "", "label": "neutral"}),
           json.dumps({"premise": "a dog sleeps.", "hypothesis": "a dog"})]   # no label
    path.write_text("\n".join(lines[:30] + bad[:2] + lines[30:90] + bad[2:] + lines[90:]) + "\n")
    return ["--task", "mnli"], "skipped 4 bad rows (2 garbled, 1 empty text, 1 missing label)"


@pytest.mark.parametrize("garble", [garble_sst2, garble_mnli], ids=["sst2", "mnli"])
def test_garbled_rows_are_skipped_and_reported(tmp_path, tiny_bert_dir, tiny_data_dir, garble):
    data = tmp_path / "data"
    shutil.copytree(tiny_data_dir, data)
    extra, expected = garble(data)
    args, out = train_args(tmp_path, tiny_bert_dir, data, extra + ["--max-eval-samples", "16"])
    result = invoke(*args)
    assert_success(result)
    train_line = printed(result, "train:")
    assert train_line.startswith("train: 200 rows from "), train_line
    assert expected in train_line
    assert "bad rows" not in printed(result, "dev:")
    assert (out / "aptune_run.json").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert expected in metrics["data"]["train"]
    assert metrics["data"]["train_rows"] == 200


# -- output folders ------------------------------------------------------------------------------
def test_overwrite_replaces_an_unrelated_folder(tmp_path, tiny_bert_dir, tiny_data_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("precious\n")
    args, _ = train_args(tmp_path, tiny_bert_dir, tiny_data_dir, ["--max-train-samples", "32"])
    assert_user_error(invoke(*args), "exists and is not an aptune run")
    assert (out / "thesis.tex").read_text() == "precious\n"

    result = invoke(*args, "--overwrite")
    assert_success(result)
    assert (out / "aptune_run.json").is_file()
    assert not (out / "thesis.tex").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .partial / .old leftovers


def test_previous_run_is_replaced_without_overwrite(tmp_path, tiny_bert_dir, tiny_data_dir, saved_run):
    out = tmp_path / "out"
    shutil.copytree(saved_run, out)
    (out / "stale.txt").write_text("from the earlier run\n")
    args, _ = train_args(tmp_path, tiny_bert_dir, tiny_data_dir,
                         ["--max-train-samples", "32", "--seed", "5"])
    result = invoke(*args)
    assert_success(result)
    assert not (out / "stale.txt").exists()
    assert (out / "aptune_run.json").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# -- aptune eval ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_run(tmp_path_factory, tiny_bert_dir, tiny_data_dir, one_thread) -> Path:
    """One finished tiny sst2 run (2 labels)."""
    out = tmp_path_factory.mktemp("saved") / "run"
    args, _ = train_args(out.parent, tiny_bert_dir, tiny_data_dir,
                         ["--output-dir", out, "--max-train-samples", "32"])
    result = invoke(*args)
    assert_success(result)
    return out


def eval_no_model(tmp, run):
    (tmp / "empty").mkdir()
    return ["--model-dir", tmp / "empty"]


def eval_absent(tmp, run):
    return ["--model-dir", tmp / "no" / "such" / "run"]


def eval_config_without_weights(tmp, run):
    (tmp / "bare").mkdir()
    shutil.copy(run / "model" / "config.json", tmp / "bare" / "config.json")
    return ["--model-dir", tmp / "bare"]


def eval_corrupt(tmp, run):
    copy = tmp / "run"
    shutil.copytree(run, copy)
    weights = copy / "model" / "model.safetensors"
    weights.write_bytes(os.urandom(256) + b"\x00garbage" * 64)
    return ["--model-dir", copy]


def eval_truncated(tmp, run):
    copy = tmp / "run"
    shutil.copytree(run, copy)
    weights = copy / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return ["--model-dir", copy]


def eval_label_mismatch(tmp, run):
    return ["--model-dir", run, "--task", "mnli"]


def eval_unknown_task(tmp, run):
    return ["--model-dir", run, "--task", "qnli"]


def eval_data_dir_absent(tmp, run):
    return ["--model-dir", run, "--data-dir", tmp / "nowhere"]


def eval_batch_size_0(tmp, run):
    return ["--model-dir", run, "--batch-size", "0"]


EVAL_CASES = [
    ("no-model", eval_no_model, ["holds no saved model"]),
    ("absent-folder", eval_absent, ["holds no saved model"]),
    ("config-without-weights", eval_config_without_weights, ["has no .safetensors weights"]),
    ("corrupt-checkpoint", eval_corrupt, ["looks corrupt"]),
    ("truncated-checkpoint", eval_truncated, ["looks corrupt"]),
    ("label-count-mismatch", eval_label_mismatch, ["has 2 labels but mnli has 3"]),
    ("unknown-task", eval_unknown_task, ["unknown task 'qnli'"]),
    ("data-dir-absent", eval_data_dir_absent, ["data directory", "does not exist"]),
    ("batch-size-0", eval_batch_size_0, ["--batch-size must be positive"]),
]


@pytest.mark.parametrize("build, needles", [c[1:] for c in EVAL_CASES],
                         ids=[c[0] for c in EVAL_CASES])
def test_eval_refuses_bad_input(tmp_path, tiny_data_dir, saved_run, build, needles):
    extra = build(tmp_path, saved_run)
    opts = {"--task": "sst2", "--data-dir": tiny_data_dir}
    for i in range(0, len(extra), 2):
        opts[extra[i]] = extra[i + 1]
    args = ["eval"] + [x for kv in opts.items() for x in kv]
    result = invoke(*args)
    assert_user_error(result, *needles)
    assert "dev (" not in result.stdout


def test_eval_succeeds_on_the_saved_run(tiny_data_dir, saved_run):
    """Control for the table above: the same run evaluates fine."""
    result = invoke("eval", "--model-dir", saved_run, "--task", "sst2", "--data-dir", tiny_data_dir)
    assert_success(result)
    assert result.stdout.startswith("sst2 dev (64 rows): accuracy ")
