"""`npo eval`: evaluate a model on a benchmark (default TOFU): per-item logs in the benchmark's format
plus `summary.json` and `summary.md`."""

from __future__ import annotations

from pathlib import Path

from npo.data.templates import TEMPLATES
from npo.eval.benchmarks import BENCHMARKS


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="model directory or hub id")
    parser.add_argument("--benchmark", choices=tuple(BENCHMARKS), default="tofu",
                        help="; ".join(f"{k}: {v[1]}" for k, v in BENCHMARKS.items()) + " (default: tofu)")
    parser.add_argument("--forget-split", help="TOFU: e.g. forget10 (its _perturbed file is evaluated)")
    parser.add_argument("--data", required=True, help="the benchmark's data: a TOFU- or MUSE-layout directory, or hf:NAME")
    parser.add_argument("--retain-logs", help="TOFU: eval logs of a model trained on the retain set only "
                                              "(reference for Forget Quality); MUSE: 'news' or 'books' (the "
                                              "paper's retrained-model AUCs) or a retain model's muse eval folder")
    parser.add_argument("--protocol", choices=["full", "legacy300"], default="full",
                        help="all items (full) or the first 300 of each set (legacy300, the published logs)")
    parser.add_argument("--max-new-tokens", type=int, default=200,
                        help="TOFU: new tokens per answer; MUSE: a cap on its 128 (VerbMem) and 32 (KnowMem)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="texts scored and prompts generated per batch (default 64: on a CPU 16 -> 64 halves "
                             "generation time, larger gains little; lower it if a GPU runs out of memory)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--template", choices=TEMPLATES,
                        help="prompt format (default: the one the model was trained with when --model is an npo "
                             "run's model, else chat if the tokenizer has a template, else qa)")
    parser.add_argument("--generation", choices=["greedy", "sampled"], default="greedy",
                        help="greedy (TOFU's evaluator, default) or sampled after manual_seed(0) (the NPO authors')")
    parser.add_argument("--gguf-file", help="a GGUF file inside --model")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--out", required=True, help="output directory for the logs and summary")


def choose_template(requested: str | None, model: str, tok) -> tuple[str, str]:
    """The template and why: the one asked for; else the one an npo run trained with (MODEL is
    RUN/model beside RUN/config.yaml); else the tokenizer's chat template; else qa."""
    import yaml

    from npo.data.templates import default_template

    if requested:
        return requested, "--template"
    config = Path(model).parent / "config.yaml"
    if Path(model).name == "model" and config.is_file():
        trained = (yaml.safe_load(config.read_text()) or {}).get("template")
        if trained:
            return trained, f"the template {config} was trained with"
    chosen = default_template(tok)
    return chosen, ("the tokenizer has a chat template" if chosen == "chat"
                    else "the tokenizer has no chat template; pass --template for another format")


def main(args) -> int:
    import torch

    from npo.errors import NpoError
    from npo.eval import benchmarks
    from npo.eval.scoring import Dist
    from npo.modeling import choose_dtype, load_model, load_tokenizer, match_vocab
    from npo.runtime import log, make_accelerator, setup_logging

    setup_logging()
    if args.max_new_tokens <= 0 or args.batch_size <= 0:
        raise NpoError("--max-new-tokens and --batch-size must be positive")
    bench = benchmarks.load(args.benchmark)
    acc = make_accelerator()
    dtype, _, _ = choose_dtype("auto", acc.device.type)
    tok = load_tokenizer(args.model, args.gguf_file, args.trust_remote_code)
    model = load_model(args.model, dtype, args.gguf_file, args.trust_remote_code).to(acc.device)
    match_vocab(model, tok)
    template, why = choose_template(args.template, args.model, tok)
    log.info("template %s (%s)", template, why)
    spec = benchmarks.EvalSpec(
        data=args.data, template=template, forget_split=args.forget_split,
        retain_logs=args.retain_logs, protocol=args.protocol, max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, max_length=args.max_length, generation=args.generation,
        identity={"model": args.model})
    with torch.no_grad():
        summary = bench.evaluate(model, tok, spec, Path(args.out), Dist.from_accelerator(acc))
    if summary is not None:
        print(bench.headline(summary))
        print(f"logs and summary: {args.out}")
    return 0
