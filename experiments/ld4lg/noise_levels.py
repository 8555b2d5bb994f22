"""Where does an LD4LG model lose the sentence? Real test latents are noised to t, denoised once by the stage-2
network (x0 from its v-prediction), decoded by BART, and scored by BLEU against the inputs, per noise level.

    .venv/bin/python experiments/ld4lg/noise_levels.py <stage-2 run dir> [--num 100] [--ckpt last] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from textdiff.cli.runs import load_run
from textdiff.data.tokenizers import decode_ids
from textdiff.metrics.text import corpus_bleu

LEVELS = (0.1, 0.3, 0.5, 0.7, 0.9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--num", type=int, default=100, help="test sentences (from the first test batch)")
    ap.add_argument("--ckpt", default="last")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    model, dm, _, _ = load_run(args.run_dir, args.ckpt)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    ids, mask = batch["ids"][:args.num], batch["mask"][:args.num]
    refs = [[row[0]] for row in decode_ids(ids, dm.tokenizer)]
    torch.manual_seed(args.seed)
    x0 = model.latents(ids, mask)
    rows = []
    for t in LEVELS:
        tt = torch.full((ids.shape[0],), t)
        xt = model.process.q_sample(x0, tt)
        with torch.no_grad():
            x0_hat = model.process.to_x0(model.net(xt, tt, None), xt, tt)
            out = model.autoencoder.decode(model.unnormalize(x0_hat))
        hyps = [row[0] for row in decode_ids(out.cpu(), dm.tokenizer)]
        rows.append({"t": t, "alpha_bar": round(float(model.process.schedule.alpha_bar(tt[:1])), 4),
                     "x0_mse": round(float(((x0_hat - x0) ** 2).mean()), 4),
                     "bleu": round(corpus_bleu(hyps, refs)["bleu"], 2), "example": hyps[0], "input": refs[0][0]})
        print(json.dumps(rows[-1], ensure_ascii=False))
    (args.run_dir / "noise_levels.json").write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
