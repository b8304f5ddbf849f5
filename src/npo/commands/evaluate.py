"""`npo eval`: evaluate a model on a benchmark (default TOFU): per-item logs in the benchmark's format
plus `summary.json` and `summary.md`."""

from __future__ import annotations

from pathlib import Path

from npo.data.mcq import SOURCES_HELP
from npo.data.templates import TEMPLATES
from npo.eval.benchmarks import BENCHMARKS, EVAL_BATCH
from npo.eval.mcq import CONVENTIONS


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, metavar="MODEL", help="model directory or hub id")
    parser.add_argument("--benchmark", choices=tuple(BENCHMARKS), default="tofu",
                        help="; ".join(f"{k}: {v[1]}" for k, v in BENCHMARKS.items()) + " (default: tofu)")
    parser.add_argument("--forget-split", metavar="SPLIT", help="TOFU: e.g. forget10 (its _perturbed file is evaluated)")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="the benchmark's data: a TOFU- or MUSE-layout directory, or hf:NAME; " + SOURCES_HELP)
    parser.add_argument("--retain-logs", metavar="DIR", help="TOFU: eval logs of a model trained on the retain set only "
                                              "(reference for Forget Quality); MUSE: 'news' or 'books' (the "
                                              "paper's retrained-model AUCs) or a retain model's muse eval folder")
    parser.add_argument("--protocol", choices=["full", "legacy300"], default="full",
                        help="all items (full) or the first 300 of each set (legacy300, the published logs)")
    parser.add_argument("--max-new-tokens", type=int, default=200, metavar="N",
                        help="TOFU: new tokens per answer; MUSE: a cap on its 128 (VerbMem) and 32 (KnowMem)")
    parser.add_argument("--batch-size", type=int, default=EVAL_BATCH, metavar="N",
                        help=f"prompts scored or generated at once (default: {EVAL_BATCH}; on a CPU 16 -> 64 halves "
                             "generation time, larger gains little; lower it if a GPU runs out of memory)")
    parser.add_argument("--max-length", type=int, metavar="N",
                        help="tokens per scored text, prompt + answer (default: 512; mcq: the model's context "
                             "length, as lm-evaluation-harness sets it)")
    parser.add_argument("--limit", type=int, metavar="N", help="mcq: only the first N questions of each subject")
    parser.add_argument("--mcq-convention", choices=tuple(CONVENTIONS), default="current",
                        help="mcq: " + "; ".join(f"{k}: {v.summary}" for k, v in CONVENTIONS.items())
                        + " (default: current)")
    parser.add_argument("--template", choices=TEMPLATES,
                        help="prompt format (default: the one the model was trained with when --model is an npo "
                             "run's model, else chat if the tokenizer has a template, else qa)")
    parser.add_argument("--generation", choices=["greedy", "sampled"], default="greedy",
                        help="greedy (TOFU's evaluator, default) or sampled after manual_seed(0) (the NPO authors')")
    parser.add_argument("--gguf-file", metavar="FILE", help="a GGUF file inside --model")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run the model repository's own Python code (off by default)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="load .bin/.pt weights, which are pickle and can run code (off: safetensors only)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory for the logs and summary")


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
    from npo.runtime import check_out_dir, make_accelerator, setup_logging

    setup_logging()
    for flag in ("max_new_tokens", "batch_size", "max_length", "limit"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise NpoError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    if args.benchmark != "mcq" and (args.limit or args.mcq_convention != "current"):
        raise NpoError("--limit and --mcq-convention apply to --benchmark mcq only")
    check_out_dir(args.out, "--out")  # before the evaluation, not after it
    bench = benchmarks.load(args.benchmark)
    acc = make_accelerator()
    dtype, _, _ = choose_dtype("auto", acc.device.type)
    tok = load_tokenizer(args.model, args.gguf_file, args.trust_remote_code)
    model = load_model(args.model, dtype, args.gguf_file, args.trust_remote_code, args.allow_pickle,
                       pickle_option="--allow-pickle").to(acc.device)
    match_vocab(model, tok)
    template, why = choose_template(args.template, args.model, tok)
    spec = benchmarks.EvalSpec(
        data=args.data, template=template, forget_split=args.forget_split,
        retain_logs=args.retain_logs, protocol=args.protocol, max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, max_length=benchmarks.max_length_for(bench, model, tok, args.max_length),
        generation=args.generation, identity={"model": args.model, "template_reason": why}, limit=args.limit,
        mcq_convention=args.mcq_convention)
    with torch.no_grad():
        summary = bench.evaluate(model, tok, spec, Path(args.out), Dist.from_accelerator(acc))
    if summary is not None:
        print(bench.headline(summary))
        print(f"logs and summary: {args.out}")
    return 0
