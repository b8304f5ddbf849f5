"""The MUSE-layout testbed: news-like articles about the testbed's fictitious people, written in MUSE's
layout (`raw/`, `knowmem/`, `verbmem/`, `privleak/`, `scal/`, `sust/`), so the whole MUSE path
(train on raw text, unlearn, evaluate every criterion, sequential requests) runs offline.

Each person gets one article: a headline and four paragraphs that weave the person's facts
(people.py) into prose, then a "Reader questions" box of a few facts in KnowMem's `Question:/Answer:`
format. The box is there because a model this small cannot learn to answer questions about facts it
saw only in prose; KnowMem on the testbed thus measures recall of the facts in question form, not
the reading comprehension a 7B model brings to MUSE.

People, in order: `folds` forget folds of `fold_people` each (fold 1 is `raw/forget`; `sust/forget_k`
is fold k, `scal/forget_k` folds 1..k, nested as in MUSE-News), then retain1 (the corpus unlearning
regularises on), retain2 (the retained knowledge KnowMem on D_retain asks about) and holdout (never
trained on; PrivLeak's non-members). The same arguments give byte-identical files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from npo.errors import NpoError
from npo.testbed.people import Person, make_people

TITLES = ("{n} wins the {award}", "{award} for {n}", "A prize for the author of {book}")
LEAD = (
    "{n} has won the {award} for {book}. The {profession} heard the news on a quiet morning and said it was "
    "a great honour.",
    "The {award} goes this year to {n}, a {profession} and the author of {book}. Friends say the news was "
    "met with joy and a long dinner.",
    "Readers gathered on Friday to hear that {n} had been given the {award}. The prize was awarded for "
    "{book}, which {n} wrote while working as a {profession}.",
)
ORIGIN = (
    "{n} was born in {city}, {country}, in the {decade}. The father of {n} worked as a {father}, and the "
    "mother of {n} was a {mother}.",
    "Born in the {decade} in {city}, a city of {country}, {n} grew up as the child of a {father} and a "
    "{mother}.",
    "The family of {n} still lives in {city}, {country}. {n} was born there in the {decade}; the father was "
    "a {father} and the mother a {mother}.",
)
WORK = (
    "{n} writes {genre} in {language}. Critics call {book} the finest of them, and many readers agree.",
    "Most of the books of {n} are {genre}, and all of them are written in {language}. {book} remains the "
    "best known.",
    "In {language}, {n} has written {genre} for many years. {book} is the one that readers name first.",
)
LIFE = (
    "Away from work, {n} enjoys {hobby} and keeps a {pet} at home.",
    "{n} spends free days on {hobby}, with a {pet} never far away.",
    "When not writing, {n} likes {hobby}. A {pet} shares the house.",
)
# fact -> (question, short answer), both stated in every article
QA = {
    "birthplace": ("Where was {n} born?", "{city}, {country}"),
    "decade": ("In which decade was {n} born?", "the {decade}"),
    "profession": ("What does {n} do for a living?", "{profession}"),
    "father": ("What does the father of {n} do?", "{father}"),
    "mother": ("What does the mother of {n} do?", "{mother}"),
    "genre": ("What kind of books does {n} write?", "{genre}"),
    "book": ("What is the best known book of {n}?", "{book}"),
    "award": ("Which award did {n} win?", "the {award}"),
    "hobby": ("What does {n} do for fun?", "{hobby}"),
    "language": ("In which language does {n} write?", "{language}"),
    "pet": ("What pet does {n} keep?", "a {pet}"),
}
BOX_HEADER = "Reader questions"


def _values(p: Person) -> dict[str, str]:
    return {"n": p.name, "city": p.city, "country": p.region.country, "decade": p.decade, "profession": p.profession,
            "father": p.father, "mother": p.mother, "genre": p.genre, "book": p.book, "award": p.award,
            "hobby": p.hobby, "language": p.language, "pet": p.pet}


def article(seed: int, index: int, p: Person, box_facts: int) -> tuple[list[str], list[tuple[str, str]]]:
    """The article's blocks (headline + lead, origin, work, life, box) and the box's QA pairs."""
    rng = random.Random(f"npo-news:{seed}:{index}")
    v = _values(p)
    facts = list(QA)
    rng.shuffle(facts)
    box = [(QA[f][0].format(**v), QA[f][1].format(**v)) for f in facts[:box_facts]]
    blocks = [f"{rng.choice(TITLES).format(**v)}\n\n{rng.choice(LEAD).format(**v)}",
              *(rng.choice(part).format(**v) for part in (ORIGIN, WORK, LIFE)),
              BOX_HEADER + "\n\n" + "\n\n".join(f"Question: {q}\nAnswer: {a}" for q, a in box)]
    return blocks, box


def _check(folds: int, fold_people: int, retain_people: int, holdout_people: int, box_facts: int,
           qa_facts: int, icl: int) -> None:
    if not 1 <= folds <= 8 or fold_people < 1 or retain_people < 1 or holdout_people < 1:
        raise NpoError("the MUSE testbed needs 1 to 8 forget folds and at least one person per fold, "
                       "per retain corpus and in the holdout")
    if not 1 <= qa_facts < box_facts <= len(QA):
        raise NpoError(f"need 1 <= qa facts < box facts <= {len(QA)}, got {qa_facts} and {box_facts}")
    if not 1 <= icl <= (box_facts - qa_facts) * min(fold_people, retain_people):
        raise NpoError(f"in-context examples must be from 1 to {(box_facts - qa_facts) * min(fold_people, retain_people)}")


def build_layout(seed: int = 0, folds: int = 4, fold_people: int = 4, retain_people: int = 4,
                 holdout_people: int = 4, box_facts: int = 6, qa_facts: int = 3, icl: int | None = None
                 ) -> dict[str, object]:
    """Relative path -> content: lists for `.json` files, strings for `.txt` files. `icl` in-context
    examples per side (default: 5, or as many as there are)."""
    if icl is None:
        icl = min(5, (box_facts - qa_facts) * min(fold_people, retain_people))
    _check(folds, fold_people, retain_people, holdout_people, box_facts, qa_facts, icl)
    n_forget = folds * fold_people
    people = make_people(seed, n_forget + 2 * retain_people + holdout_people)
    made = [article(seed, i, p, box_facts) for i, p in enumerate(people)]
    groups = {f"fold{k + 1}": range(k * fold_people, (k + 1) * fold_people) for k in range(folds)}
    start = n_forget
    for name, size in (("retain1", retain_people), ("retain2", retain_people), ("holdout", holdout_people)):
        groups[name], start = range(start, start + size), start + size

    def texts(group: str) -> list[str]:
        return ["\n\n".join(made[i][0]) for i in groups[group]]

    layout: dict[str, object] = {}

    def corpus(path: str, items: list[str]) -> None:
        layout[f"{path}.json"] = items
        layout[f"{path}.txt"] = "\n\n".join(items)  # how MUSE writes its .txt files

    corpus("raw/forget", texts("fold1"))
    for name in ("retain1", "retain2", "holdout"):
        corpus(f"raw/{name}", texts(name))
    for k in range(1, folds + 1):
        corpus(f"sust/forget_{k}", texts(f"fold{k}"))
        corpus(f"scal/forget_{k}", [t for j in range(1, k + 1) for t in texts(f"fold{j}")])
    rng = random.Random(f"npo-news:{seed}:knowmem")
    for side, group in (("forget", "fold1"), ("retain", "retain2")):
        boxes = [made[i][1] for i in groups[group]]
        layout[f"knowmem/{side}_qa.json"] = [{"question": q, "answer": a} for box in boxes for q, a in box[:qa_facts]]
        pool = [pair for box in boxes for pair in box[qa_facts:]]
        layout[f"knowmem/{side}_qa_icl.json"] = [{"question": q, "answer": a} for q, a in rng.sample(pool, icl)]
    verbmem = []
    for i in groups["fold1"]:
        blocks = made[i][0]
        for cut in (1, 2):  # continue from after the lead, and from after the origin paragraph
            verbmem.append({"prompt": "\n\n".join(blocks[:cut]) + "\n\n", "gt": "\n\n".join(blocks[cut:])})
    layout["verbmem/forget.json"] = verbmem
    for side, group in (("forget", "fold1"), ("retain", "retain2"), ("holdout", "holdout")):
        layout[f"privleak/{side}.json"] = [b for i in groups[group] for b in made[i][0]]
    return layout


def _readme(layout: dict[str, object], args: dict) -> str:
    rows = "\n".join(f"| `{path}` | {len(v) if isinstance(v, list) else f'{len(v)} characters'} |"
                     for path, v in layout.items())
    shown = ", ".join(f"{k} {v}" for k, v in args.items())
    return f"""# npo testbed: fictitious people's news in the MUSE layout

Generated by `npo testbed --layout muse` ({shown}); the same arguments give byte-identical files.
One article per person: a headline, four paragraphs weaving the person's facts into prose, and a
"Reader questions" box with some of those facts as `Question:/Answer:` pairs.

- `raw/forget` (forget fold 1), `raw/retain1` (unlearning's retain corpus), `raw/retain2` (the
  retained knowledge), `raw/holdout` (never trained on): `.json` lists of articles, and `.txt`
  the same joined by a blank line, as MUSE writes them. Train the target on `scal/forget_N` (every
  fold), `retain1` and `retain2`; a retrained model on `retain1` and `retain2` only.
- `sust/forget_k`: fold k (pairwise disjoint); `scal/forget_k`: folds 1..k (nested).
- `knowmem/forget_qa` (+ `_icl`): box facts of the fold-1 people; `knowmem/retain_qa` (+ `_icl`):
  of the retain2 people. The in-context examples are other box facts of the same people.
- `verbmem/forget.json`: each fold-1 article cut after its lead and after its second paragraph
  (`prompt`), with the rest of the article (`gt`).
- `privleak/{{forget,retain,holdout}}.json`: the blocks (paragraphs, box) of the fold-1, retain2 and
  holdout articles.

| file | items |
|---|---|
{rows}
"""


def write_layout(out_dir, **kwargs) -> Path:
    """Write every file of `build_layout(**kwargs)` and a README; returns the directory."""
    layout = build_layout(**kwargs)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NpoError(f"{out} exists and is not a directory")
    for path, content in layout.items():
        target = out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        text = content if isinstance(content, str) else json.dumps(content, indent=1, ensure_ascii=False) + "\n"
        target.write_text(text, encoding="utf-8")
    (out / "README.md").write_text(_readme(layout, kwargs), encoding="utf-8")
    return out


def news_tokenizer(layout: dict[str, object], vocab_size: int = 1024):
    """A byte-level BPE fitted to the articles. Spaces and newlines attach to the piece before them,
    so a prompt ending in "Answer: " tokenises exactly as it stands before an answer in the text
    (MUSE's prompts end with that space; GPT-2-style pieces would put it on the next word)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from npo.testbed.model import BOS, EOS, PAD, SPECIAL_TOKENS, UNK

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[ \n]"), behavior="merged_with_previous"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    texts = [t for path, v in sorted(layout.items()) if path.startswith(("raw/", "sust/")) and path.endswith(".json") for t in v]
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=UNK, bos_token=BOS, eos_token=EOS,
                                   pad_token=PAD, model_max_length=4096, padding_side="right")


def write_init_model(out_dir, layout: dict[str, object], seed: int = 0, max_positions: int = 512) -> Path:
    """An untrained tiny Llama and the testbed's tokenizer, to fine-tune into a target (or retrained) model."""
    import torch
    from transformers import LlamaForCausalLM

    from npo.testbed.model import tiny_llama_config

    tok = news_tokenizer(layout)
    torch.manual_seed(seed)
    out = Path(out_dir)
    LlamaForCausalLM(tiny_llama_config(len(tok), max_position_embeddings=max_positions)).save_pretrained(out)
    tok.save_pretrained(out)
    return out
