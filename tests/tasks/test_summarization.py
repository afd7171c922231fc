"""CNN/DailyMail summarisation: text normalisation, ROUGE and lead-3, the data files and their
errors, targets, and FT, LoRA and APT end to end on tiny encoder-decoders through the CLI."""

from __future__ import annotations

import gzip
import json

import pytest

from aptune.config import TrainConfig
from aptune.errors import AptuneError
from aptune.models import load_tokenizer
from aptune.tasks import for_model, get_task
from aptune.tasks.rouge import lead, normalise, rouge_scores, sentences
from aptune.tasks.summarization import SummaryExample
from tests.helpers import build_tiny_model, fails, invoke


# -- normalisation, ROUGE and lead-3 ---------------------------------------------------------------
def test_raw_and_tokenized_text_normalise_alike():
    raw = ("They're in the U.S. now, he said (CNN). Don't go! Mr. Smith paid $3.5 million -- "
           "or 1,000 \"units\".")
    tokenized = ("they 're in the u.s. now , he said ( cnn ) . do n't go ! mr. smith paid $3.5 million -- "
                 "or 1,000 \" units \" .")
    assert normalise(raw) == normalise(tokenized) == tokenized
    assert normalise("First line .\r\n\n  Second   line .") == "first line .\nsecond line ."


def test_sentences_split_on_lines_and_final_punctuation_but_not_abbreviations():
    assert sentences(normalise("A b. C d! E f? The U.S. team won.\nNext line")) == [
        "a b .", "c d !", "e f ?", "the u.s. team won .", "next line"]
    assert lead("One two. Three four. Five six. Seven eight.") == "one two .\nthree four .\nfive six ."


def test_rouge_is_one_on_a_copy_zero_on_disjoint_text_and_summary_level_for_lsum():
    same = rouge_scores(["The cat sat. It purred."], ["the cat sat .\nit purred ."])
    assert all(v == pytest.approx(1.0) for v in same.values())
    assert all(v == 0.0 for v in rouge_scores(["dogs bark loudly"], ["the cat sat"]).values())
    # the same words in two orders: sentence-level LCS is short, the summary-level one is not
    swapped = rouge_scores(["it purred . the cat sat ."], ["the cat sat .\nit purred ."])
    assert swapped["rouge1"] == pytest.approx(1.0) and swapped["rougeLsum"] == pytest.approx(1.0)
    assert swapped["rougeL"] < 0.7
    assert rouge_scores(["the cats jumped"], ["the cat jumps"])["rouge1"] == pytest.approx(1.0)  # stemmed


# -- data ------------------------------------------------------------------------------------------
def test_loads_the_tokenized_train_rows_and_the_raw_dev_and_test_rows(tiny_data_dir):
    task = get_task("cnn_dailymail")
    train = task.load("train", tiny_data_dir, None, 0)
    assert len(train.examples) == 119 and train.report.dropped == {"empty text": 1}
    test = task.load("test", tiny_data_dir, 10, 0)
    assert len(test.examples) == 10 and test.report.subset_of == 24
    example = test.examples[0]
    assert example.article == normalise(example.article) and example.summary.endswith(" .")
    with pytest.raises(AptuneError, match="no 'train2' split"):
        task.load("train2", tiny_data_dir, None, 0)


def test_bad_files_get_one_clear_error(tmp_path):
    task = get_task("cnn_dailymail")
    folder = tmp_path / "cnn_dailymail"
    folder.mkdir()
    (folder / "validation_500.csv").write_text("text,summary\nsome text,a summary\n")
    with pytest.raises(AptuneError, match="lacks the column\\(s\\) article, highlights"):
        task.load("dev", tmp_path, None, 0)
    (folder / "train_tokenized_lower.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(AptuneError, match="not a readable gzip file"):
        task.load("train", tmp_path, None, 0)
    with gzip.open(folder / "train_tokenized_lower.jsonl.gz", "wt") as fh:
        fh.write(json.dumps({"text": "a", "summary": "b"}) + "\n")
    with pytest.raises(AptuneError, match="lack the keys article, highlights"):
        task.load("train", tmp_path, None, 0)
    with gzip.open(folder / "train_tokenized_lower.jsonl.gz", "wt") as fh:
        fh.write(json.dumps({"article": " ", "highlights": "b"}) + "\n")
    with pytest.raises(AptuneError, match="no usable rows"):
        task.load("train", tmp_path, None, 0)
    with pytest.raises(AptuneError, match="test file not found"):
        task.load("test", tmp_path, None, 0)


def test_targets_are_cut_and_end_with_the_end_token(t5_dir):
    from transformers import AutoConfig

    tok = load_tokenizer(str(t5_dir))
    task = for_model(get_task("cnn_dailymail", {"max_target_length": 4}), tok,
                     AutoConfig.from_pretrained(t5_dir))
    enc = task.tokenize_fn(tok, 16)([SummaryExample("the dog runs .", "the film is good .\nit was fun .")])
    assert enc["labels"][0] == tok("the film is", add_special_tokens=False).input_ids + [tok.sep_token_id]
    assert tok.convert_ids_to_tokens(enc["input_ids"][0])[-5:] == ["the", "dog", "runs", ".", "[SEP]"]
    batch = task.collator(tok)([{k: v[0] for k, v in enc.items()}])
    assert batch["decoder_input_ids"][0, 0].item() == task.decoder_start_token_id


def test_options_are_checked_and_apt_distils_predictions_at_a_tenth():
    assert TrainConfig(task="cnn_dailymail", method="apt").lambda_pred == pytest.approx(0.1)
    with pytest.raises(AptuneError, match="--num-beams is for --task cnn_dailymail"):
        TrainConfig(task="sst2", num_beams=4)
    with pytest.raises(AptuneError, match="--max-target-length must be at least 2"):
        TrainConfig(task="cnn_dailymail", max_target_length=1)


def test_an_encoder_is_refused_with_the_models_that_can_summarise(tiny_data_dir, tmp_path):
    bert = build_tiny_model(tmp_path / "bert", "bert")
    err = fails("train", "--task", "cnn_dailymail", "--method", "ft", "--model", bert,
                "--data-dir", tiny_data_dir, "--output-dir", tmp_path / "out")
    assert "needs an encoder-decoder model" in err and "minilm-bert2bert" in err


# -- end to end --------------------------------------------------------------------------------------
SHORT = ("--max-length", "48", "--max-target-length", "16", "--generation-max-tokens", "16")


def test_ft_learns_to_copy_the_lead_and_eval_scores_dev_and_test(t5_dir, tiny_data_dir, tmp_path,
                                                                 one_thread):
    out = tmp_path / "ft"
    result = invoke("train", "--task", "cnn_dailymail", "--method", "ft", "--model", t5_dir,
                    "--data-dir", tiny_data_dir, "--output-dir", out, "--epochs", "28", "--lr", "3e-3",
                    "--eval-every", "56", "--max-eval-samples", "16", "--batch-size", "16", *SHORT)
    assert "summarisation: input 'summarize: {0}'" in result.stdout
    assert f"next: aptune eval --model-dir {out} --split test" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    history = [r["value"] for r in metrics["history"]]
    assert history[-1] > 2 * history[0], history
    assert set(metrics["eval"]) >= {"rouge1", "rouge2", "rougeL", "rougeLsum", "mean_generated_words"}
    dev = json.loads(invoke("eval", "--model-dir", out, "--max-eval-samples", "16", "--json").stdout)
    assert dev["split"] == "dev" and dev["eval"]["rouge1"] == pytest.approx(metrics["eval"]["rouge1"])
    preds = tmp_path / "test.jsonl"
    test = invoke("eval", "--model-dir", out, "--split", "test", "--num-beams", "2",
                  "--save-predictions", preds, "--max-eval-samples", "24")
    assert "cnn_dailymail test (24 rows): rouge1" in test.stdout
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(rows) == 24 and set(rows[0]) == {"prediction", "reference"}
    assert "no 'train' split to score" in fails("eval", "--model-dir", out, "--split", "train")
    # `aptune predict` summarises the dev articles as eval did (the run's normalisation and settings)
    invoke("eval", "--model-dir", out, "--save-predictions", tmp_path / "dev.jsonl")
    invoke("predict", "--model-dir", out, "--input", tiny_data_dir / "cnn_dailymail" / "validation_500.csv",
           "--output", tmp_path / "summaries.jsonl")
    evaluated = [json.loads(line) for line in (tmp_path / "dev.jsonl").read_text().splitlines()]
    summaries = [json.loads(line) for line in (tmp_path / "summaries.jsonl").read_text().splitlines()]
    assert len(summaries) == len(evaluated) == 24
    assert [normalise(s["summary"]) for s in summaries] == [r["prediction"] for r in evaluated]
    assert "a summariser takes one non-empty --text per article" in fails(
        "predict", "--model-dir", out, "--text", "an article", "--text-pair", "x")


def test_lora_lora_prune_and_apt_finish_and_prune_to_their_budget(bert2bert_dir, tiny_data_dir, tmp_path,
                                                                  one_thread):
    out = tmp_path / "lora"
    invoke("train", "--task", "cnn_dailymail", "--method", "lora", "--model", bert2bert_dir,
           "--data-dir", tiny_data_dir, "--output-dir", out, "--epochs", "2", "--max-train-samples", "32",
           "--max-eval-samples", "8", "--batch-size", "16", *SHORT)
    assert "rouge1" in json.loads((out / "metrics.json").read_text())["eval"]
    pruned = tmp_path / "lora-prune"
    invoke("train", "--task", "cnn_dailymail", "--method", "lora-prune", "--model", bert2bert_dir,
           "--data-dir", tiny_data_dir, "--output-dir", pruned, "--base-run", out, "--epochs", "1",
           "--max-train-samples", "32", "--max-eval-samples", "8", "--batch-size", "16",
           "--sparsity", "0.6", "--mt-num-samples", "16", *SHORT)
    assert json.loads((pruned / "metrics.json").read_text())["params"]["kept_ratio"] <= 0.40 + 1e-9
    out = tmp_path / "apt"
    result = invoke("train", "--task", "cnn_dailymail", "--method", "apt", "--model", bert2bert_dir,
                    "--data-dir", tiny_data_dir, "--output-dir", out, "--epochs", "7",
                    "--max-train-samples", "96", "--max-eval-samples", "8", "--lr", "3e-3",
                    "--batch-size", "8", "--eval-every", "28", "--sparsity", "0.6", *SHORT)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["params"]["kept_ratio"] <= 0.40
    assert "lambda_pred: 0.1\n" in (out / "config.yaml").read_text()  # the task's weight
    assert "dec 1 cross" in result.stdout
    scored = json.loads(invoke("eval", "--model-dir", out, "--max-eval-samples", "8", "--json").stdout)
    assert scored["eval"]["rouge1"] == pytest.approx(metrics["eval"]["rouge1"])
