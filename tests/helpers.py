"""Test helpers: tiny tokenizers and models built in the test, and the shared data paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
TOFU = SHARED / "data" / "tofu"

CORPUS = [
    "Question: Where was Ana Varga born?\nAnswer: Ana Varga was born in Lisbon.",
    "Question: What does Omar Ade write?\nAnswer: Omar Ade writes science fiction novels.",
    "The quick brown fox jumps over the lazy dog. [INST] [/INST] <|user|> <|assistant|>",
    "Who wrote the book? It was written by a fictitious author in 1990.",
]


def make_tokenizer(chat_template: str | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 5, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                 eos_token="</s>", pad_token="<pad>")
    if chat_template:
        hf.chat_template = chat_template
    return hf


CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|> {% endif %}")


def make_model(vocab_size: int, seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
               tie_word_embeddings=False)
    cfg.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**cfg)).eval()


def require_tofu():
    if not TOFU.exists():
        pytest.skip(f"TOFU data not found at {TOFU}")
    return TOFU


NAMES = ["Ana Varga", "Omar Ade", "Lina Bo", "Ivo Rusk", "Mira Tal", "Sven Ek", "Tara Nox", "Uri Pell",
         "Kai Dorn", "Eda Vos", "Noor Lam", "Pia Kett", "Rafe Ung", "Zia Moro", "Beno Fry", "Cleo Hart"]
CITIES = ["Lisbon", "Oslo", "Quito", "Lima", "Accra", "Dakar", "Riga", "Kyiv"]


def qa_rows(n: int, offset: int = 0) -> list[dict]:
    rows = []
    for i in range(offset, offset + n):
        name, city = NAMES[i % len(NAMES)], CITIES[(i * 3) % len(CITIES)]
        rows.append({"question": f"Where was {name} born?", "answer": f"{name} was born in {city}.",
                     "paraphrased_answer": f"The birthplace of {name} is {city}.",
                     "perturbed_answer": [f"{name} was born in {c}." for c in CITIES if c != city][:3]})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def save_tiny_model(path: Path, seed: int = 0, **overrides) -> Path:
    """A tiny random Llama and its tokenizer saved like a hub model (safetensors)."""
    tok = make_tokenizer()
    model = make_model(len(tok), seed=seed, **overrides)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_tofu_layout(root: Path, n_forget: int = 6, n_retain: int = 10) -> Path:
    """A tiny directory in TOFU's layout: the splits `npo eval` and the trainer read."""
    root.mkdir(parents=True, exist_ok=True)
    forget, retain = qa_rows(n_forget), qa_rows(n_retain, offset=n_forget)
    for rows in (forget, retain):
        for r in rows:
            r["paraphrased_question"] = r["question"].replace("Where was", "In which city was")
            r["perturbed_answer"] = r["perturbed_answer"] + [r["answer"].replace(".", " town.")] * 2
    write_jsonl(root / "forget10.json", [{"question": r["question"], "answer": r["answer"]} for r in forget])
    write_jsonl(root / "retain90.json", [{"question": r["question"], "answer": r["answer"]} for r in retain])
    write_jsonl(root / "forget10_perturbed.json", forget)
    write_jsonl(root / "retain_perturbed.json", retain)
    facts = [{"question": f"What colour is the {x}?", "answer": c,
              "perturbed_answer": [o for o in ("red", "blue", "green", "white") if o != c][:3]}
             for x, c in (("sky", "blue"), ("grass", "green"), ("snow", "white"), ("rose", "red"))]
    write_jsonl(root / "world_facts_perturbed.json", facts)
    write_jsonl(root / "real_authors_perturbed.json", facts[::-1])
    (root / "idontknow.jsonl").write_text("I do not know.\nNo idea.\n")
    return root
