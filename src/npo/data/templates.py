"""Prompt formats. The answer is appended to the rendered prompt verbatim, then the EOS token.

- `chat`: the tokenizer's own chat template (a user turn, then the generation prompt);
- `llama2-tofu`: `[INST] {q} [/INST]{a}`, the format of TOFU's Llama-2 models (no system prompt,
  no space before the answer);
- `qa`: `Question: {q}\nAnswer: {a}`, the prompt ending at `Answer: `;
- `tofu-qa`: the same text as TOFU's official code builds it for Phi, StableLM and Pythia: the prompt is
  `Question: {q}\n` and the tag `Answer: ` belongs to the answer (it is labelled, and generation
  starts from `Question: {q}\n`); TOFU's published Phi logs were scored this way;
- `raw`: the question followed directly by the answer.
"""

from __future__ import annotations

from npo.errors import ConfigError

TEMPLATES = ("chat", "llama2-tofu", "qa", "tofu-qa", "raw")
# text between the prompt and the answer that is labelled with the answer
ANSWER_PREFIX = {"tofu-qa": "Answer: "}


def default_template(tokenizer) -> str:
    """`chat` when the tokenizer carries a chat template, else `qa`."""
    return "chat" if getattr(tokenizer, "chat_template", None) else "qa"


def answer_prefix(template: str) -> str:
    """Labelled text before the answer (the answer tag of `tofu-qa`), empty for the other templates."""
    return ANSWER_PREFIX.get(template, "")


def render_prompt(template: str, question: str, tokenizer=None) -> str:
    """The unlabelled text that precedes the answer (and its prefix): what generation starts from."""
    if template == "llama2-tofu":
        return f"[INST] {question} [/INST]"
    if template == "qa":
        return f"Question: {question}\nAnswer: "
    if template == "tofu-qa":
        return f"Question: {question}\n"
    if template == "raw":
        return question + " "
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ConfigError("template 'chat' needs a tokenizer with a chat template; use 'qa' or 'llama2-tofu'")
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    raise ConfigError(f"unknown template '{template}' (choose from {', '.join(TEMPLATES)})")
