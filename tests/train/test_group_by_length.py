"""--group-by-length: shuffled mega-batches sorted by length, so that batches pad less; the same
rows every epoch, the same batches after a resume, and a flag that reaches the training loader."""

from __future__ import annotations

import pytest
import torch

from aptune.train.data import EncodedDataset, LengthGroupedSampler, make_loader
from tests.train.test_resume import aptune, evaluations, train, unfinished, weights

pytestmark = pytest.mark.usefixtures("one_thread", "no_env_data_dir")


def lengths_of(n: int, seed: int = 0) -> list[int]:
    return torch.randint(3, 60, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_each_epoch_is_a_permutation_sorted_within_mega_batches():
    lengths = lengths_of(1000)
    sampler = LengthGroupedSampler(lengths, batch_size=4, generator=torch.Generator().manual_seed(1),
                                   mega_batches=10)  # mega-batches of 40 rows
    first, second = list(sampler), list(sampler)
    assert sorted(first) == list(range(1000)) and sorted(second) == list(range(1000))
    assert first != second  # a new permutation every epoch
    for order in (first, second):
        for start in range(0, 1000, 40):
            run = [lengths[i] for i in order[start:start + 40]]
            assert run == sorted(run, reverse=True)
    again = LengthGroupedSampler(lengths, 4, torch.Generator().manual_seed(1), mega_batches=10)
    assert list(again) == first  # the seed fixes the order


def padded_tokens(loader) -> int:
    return sum(b["input_ids"].numel() for b in loader)


def test_grouped_batches_pad_less_and_keep_every_row():
    lengths = lengths_of(640, seed=3)
    rows = [[101] + [7] * (n - 2) + [102] for n in lengths]
    ds = EncodedDataset({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows],
                         "labels": [i % 2 for i in range(len(rows))]})
    tokenizer = _pad_only_tokenizer()  # the collator reads only its pad id and padding side
    plain = make_loader(ds, tokenizer, 16, shuffle=True, seed=5)
    grouped = make_loader(ds, tokenizer, 16, shuffle=True, seed=5, group_by_length=True)
    seen = sorted(int(x) for b in grouped for x in b["labels"])
    assert seen == sorted(i % 2 for i in range(len(rows)))
    assert sum(len(b["labels"]) for b in grouped) == len(rows)
    # (n_rows, padded length) summed over batches: grouping pads far less than random batches
    assert padded_tokens(grouped) < 0.8 * padded_tokens(plain)
    assert padded_tokens(grouped) >= sum(lengths)


def _pad_only_tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"[PAD]": 0, "[UNK]": 1},
                                                                        unk_token="[UNK]")),
                                   pad_token="[PAD]", unk_token="[UNK]")


def test_a_grouped_run_differs_and_resumes_exactly(tmp_path, tiny_bert_dir, tiny_data_dir):
    grouped = tmp_path / "grouped"
    done = train(grouped, tiny_bert_dir, tiny_data_dir, "ft", "--group-by-length")
    assert done.returncode == 0, done.stderr
    plain = tmp_path / "plain"
    assert train(plain, tiny_bert_dir, tiny_data_dir, "ft").returncode == 0
    assert evaluations(plain) != evaluations(grouped)  # the flag reaches the training loader
    assert "group_by_length: true" in (grouped / "config.yaml").read_text()

    out = tmp_path / "stopped"
    stopped = train(out, tiny_bert_dir, tiny_data_dir, "ft", "--group-by-length", fault="17:TERM")
    assert stopped.returncode != 0 and (unfinished(out) / "checkpoint" / "state.json").is_file()
    resumed = aptune("train", "--resume", out, "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert evaluations(out) == evaluations(grouped)
    expected, got = weights(grouped), weights(out)
    assert all((expected[k] == got[k]).all() for k in expected), "weights differ after resuming"
