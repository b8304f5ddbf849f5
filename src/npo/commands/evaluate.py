"""`npo eval`: TOFU evaluation of a model, written in the official log format plus a summary."""

from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="model directory or hub id")
    parser.add_argument("--forget-split", required=True, help="e.g. forget10 (its _perturbed file is evaluated)")
    parser.add_argument("--data", default="hf:locuslab/TOFU",
                        help="TOFU-layout directory, or hf:NAME (default: hf:locuslab/TOFU)")
    parser.add_argument("--retain-logs", help="eval logs of the retain-only model, for Forget Quality")
    parser.add_argument("--protocol", choices=["full", "legacy300"], default="full",
                        help="all items (full) or the first 300 of each set (legacy300, the published logs)")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--template", choices=["chat", "llama2-tofu", "qa", "raw"],
                        help="prompt format (default: chat if the tokenizer has a template, else qa)")
    parser.add_argument("--gguf-file", help="a GGUF file inside --model")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--out", required=True, help="output directory for the logs and summary")


def main(args) -> int:
    import torch

    from npo.data.templates import default_template
    from npo.errors import NpoError
    from npo.eval.run import evaluate_model
    from npo.eval.tofu import Dist
    from npo.modeling import choose_dtype, load_model, load_tokenizer, match_vocab
    from npo.runtime import make_accelerator, setup_logging

    setup_logging()
    if args.max_new_tokens <= 0 or args.batch_size <= 0:
        raise NpoError("--max-new-tokens and --batch-size must be positive")
    acc = make_accelerator()
    dtype, _, _ = choose_dtype("auto", acc.device.type)
    tok = load_tokenizer(args.model, args.gguf_file, args.trust_remote_code)
    model = load_model(args.model, dtype, args.gguf_file, args.trust_remote_code).to(acc.device)
    match_vocab(model, tok)
    dist = Dist.from_accelerator(acc)
    with torch.no_grad():
        summary = evaluate_model(
            model, tok, data=args.data, forget_split=args.forget_split, template=args.template or default_template(tok),
            out=Path(args.out), protocol=args.protocol, retain_logs=args.retain_logs,
            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, max_length=args.max_length,
            identity={"model": args.model}, dist=dist)
    if summary is not None:
        fq = summary["forget_quality"]
        print(f"Model Utility {summary['model_utility']:.4f}; Forget Quality "
              + (f"{fq:.4g}" if fq is not None else f"n/a ({summary['forget_quality_reason']})"))
        print(f"logs and summary: {args.out}")
    return 0
