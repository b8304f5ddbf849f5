"""The testbed's model side: a byte-level BPE tokenizer trained on the testbed text, and a tiny Llama.

Why train both from scratch: the demo runs offline with no model hub, and a vocabulary fitted to
the testbed's ~500 words keeps sequences short (~25 tokens per QA pair), which is what makes
memorising the data on a 2-core CPU take about a minute.
"""

from __future__ import annotations

from collections.abc import Iterable

# ids 0..3 match LlamaConfig's defaults (bos 1, eos 2)
UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = (UNK, BOS, EOS, PAD)

# Measured on the default testbed (full + real_authors + world_facts: 1,110 pairs, 25k tokens) with
# the `qa` prompt, loss on answer tokens + EOS, AdamW betas (0.9, 0.98), linear warm-up over the
# first epoch then linear decay to 0: answer-token accuracy 95% after 14 epochs, 99.4% (95% of
# answers exact) after 20; one thread does ~8k tokens/s forward+backward, so ~1 minute on a CPU
# (two threads on a 2-core machine with any other load ran 20x slower: prefer one).
MEMORISE_RECIPE = {"epochs": 20, "lr": 3e-3, "batch_size": 16, "weight_decay": 0.01, "warmup_epochs": 1}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024, model_max_length: int = 256):
    """Byte-level BPE (no unknown characters, exact decode) that prepends `<s>` like Llama's; the
    trainer is deterministic for the same texts in the same order."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=UNK, bos_token=BOS, eos_token=EOS,
                                   pad_token=PAD, model_max_length=model_max_length, padding_side="right")


def tiny_llama_config(vocab_size: int, **overrides):
    """A 0.56M-parameter Llama (1,024 vocabulary, tied embeddings) that memorises the default testbed
    with MEMORISE_RECIPE; 4 layers (0.98M) learn no faster per epoch and cost 1.8x the time per
    token. `overrides` are LlamaConfig fields."""
    from transformers import LlamaConfig

    cfg = dict(vocab_size=vocab_size, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
               tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=10000.0,
               bos_token_id=SPECIAL_TOKENS.index(BOS), eos_token_id=SPECIAL_TOKENS.index(EOS),
               pad_token_id=SPECIAL_TOKENS.index(PAD))
    cfg.update(overrides)
    return LlamaConfig(**cfg)


def tokenizer_corpus(splits: dict[str, list[dict]], extra: Iterable[str] = ()) -> list[str]:
    """A tokenizer corpus in a fixed order: each QA pair in the `qa` prompt format, then every other
    sentence of the record (paraphrases, perturbed answers: evaluation text should tokenize as
    compactly as training text), then `extra` (e.g. refusals)."""
    out = []
    for records in splits.values():
        for r in records:
            out.append(f"Question: {r['question']}\nAnswer: {r['answer']}")
            out += [r[k] for k in ("paraphrased_question", "paraphrased_answer") if k in r]
            out += r.get("perturbed_answer", [])
    return out + list(extra)
