"""Prompt formats. The answer is appended to the rendered prompt verbatim, then the EOS token.

- `chat`: the tokenizer's own chat template (a user turn, then the generation prompt);
- `llama2-tofu`: `[INST] {q} [/INST]{a}`, the format of TOFU's Llama-2 models (no system prompt,
  no space before the answer);
- `qa`: `Question: {q}\nAnswer: {a}`, TOFU's format for Phi and other base models;
- `raw`: the question followed directly by the answer.
"""

from __future__ import annotations

from npo.errors import ConfigError

TEMPLATES = ("chat", "llama2-tofu", "qa", "raw")


def default_template(tokenizer) -> str:
    """`chat` when the tokenizer carries a chat template, else `qa`."""
    return "chat" if getattr(tokenizer, "chat_template", None) else "qa"


def render_prompt(template: str, question: str, tokenizer=None) -> str:
    """The text that precedes the answer."""
    if template == "llama2-tofu":
        return f"[INST] {question} [/INST]"
    if template == "qa":
        return f"Question: {question}\nAnswer: "
    if template == "raw":
        return question + " "
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ConfigError("template 'chat' needs a tokenizer with a chat template; use 'qa' or 'llama2-tofu'")
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    raise ConfigError(f"unknown template '{template}' (choose from {', '.join(TEMPLATES)})")
