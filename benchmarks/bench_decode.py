"""Greedy decoding of TOFU prompts: npo's decoder at several batch sizes against `model.generate`,
token for token, and its CPU time (the evaluation's generation, without scoring).

    .venv/bin/python benchmarks/bench_decode.py --model DIR [--items 30] [--batch-sizes 16,32,64,128]
        [--max-new-tokens 200] [--threads 1]

Prompts: the first `--items` questions of each of the four TOFU eval sets, tokenized as the evaluation
does (`prompt_ids`, template qa), sorted by length. Reference: `model.generate(do_sample=False)` in
batches of 16 (npo's previous default), timed too. For each batch size: npo's `greedy_decode` (rows
leave the batch at EOS, in-place KV cache), its CPU time, the decode steps (forward calls summed over
batches) and the number of items whose tokens equal the reference's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import TOFU, machine_line, require_tofu, table  # noqa: E402

SETS = ("forget10_perturbed", "retain_perturbed", "real_authors_perturbed", "world_facts_perturbed")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--items", type=int, default=30)
    p.add_argument("--batch-sizes", default="16,32,64,128")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", type=Path, default=TOFU)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from npo.data.qa import load_qa
    from npo.eval.decode import greedy_decode
    from npo.eval.scoring import prompt_ids
    from npo.modeling import load_model, load_tokenizer

    require_tofu(args.data)
    print("bench_decode:", machine_line(args.threads))
    model, tok = load_model(str(args.model), torch.float32).eval(), load_tokenizer(str(args.model))
    records = [r for s in SETS for r in load_qa(str(args.data), s)[:args.items]]
    encoded = prompt_ids(tok, "qa", records, 512)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    tok.padding_side = "left"
    pad, eos = tok.pad_token_id, tok.eos_token_id

    def run(batch_size: int, fast: bool) -> tuple[float, int, dict]:
        out, steps, t = {}, 0, time.process_time()
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                b = tok.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt")
                if fast:
                    new = greedy_decode(model, b["input_ids"], b["attention_mask"], args.max_new_tokens, eos, pad)
                else:
                    new = model.generate(**b, max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=pad,
                                         eos_token_id=eos)[:, b["input_ids"].shape[1]:]
                steps += new.shape[1]
                for k, i in enumerate(idx):
                    out[i] = [x for x in new[k].tolist() if x != pad]
        return time.process_time() - t, steps, out

    ref_cpu, ref_steps, ref = run(16, fast=False)
    rows = [["model.generate", "16", f"{ref_cpu:.1f}", str(ref_steps), "(reference)"]]
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        cpu, steps, out = run(bs, fast=True)
        same = sum(out[i] == ref[i] for i in ref)
        rows.append(["npo greedy_decode", str(bs), f"{cpu:.1f}", str(steps), f"{same}/{len(ref)}"])
        print("  ", rows[-1], flush=True)
    print(f"\n{len(records)} prompts ({args.items} per set), max_new_tokens {args.max_new_tokens}, {args.model}\n")
    print(table(rows, ["decoder", "batch", "CPU s", "decode steps", "items identical to generate"]))


if __name__ == "__main__":
    main()
