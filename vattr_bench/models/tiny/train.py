"""Train the embedded `vattr-tiny` thinking VLM on the five synthetic families.

    python -m vattr_bench.models.tiny.train --output vattr_bench/models/tiny/checkpoint

Seeded and CPU-only: fresh synthetic samples every step (split "train"), the loss only on the
assistant's `<think> … </think> answer </s>`, periodic greedy accuracy on split "val", and the
checkpoint with the best worst-family validation accuracy is kept. Split "test" is never seen here.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ...benchmarks import FAMILIES, synthetic_sample
from ...types import THINK_CLOSE
from ..prompting import answer_from_trace, build_prompt, is_correct
from .build import build_model, build_processor

DEFAULT_OUTPUT = Path(__file__).parent / "checkpoint"


ANSWER_WEIGHT = 4.0  # the answer is one token of ~30 but needs the whole chain of steps: weight it up


def weighted_loss(logits, labels, answer_from):
    """Token cross-entropy with the tokens after `</think>` weighted by ANSWER_WEIGHT."""
    logits, labels = logits[:, :-1], labels[:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    positions = torch.arange(labels.shape[1], device=labels.device).unsqueeze(0)
    weight = torch.where(positions >= answer_from.unsqueeze(1), ANSWER_WEIGHT, 1.0) * (labels != -100)
    return (ce * weight).sum() / weight.sum()


def encode_batch(processor, samples, with_targets: bool):
    """Prompt (+ gold trace) for each sample -> model inputs; labels cover only what the assistant says."""
    prompts = [build_prompt(processor, s.prompt) for s in samples]
    texts = [f"{p} {s.reference_trace} {processor.tokenizer.eos_token}" for p, s in zip(prompts, samples)] if with_targets else prompts
    enc = processor(text=texts, images=[s.image for s in samples], padding=True, return_tensors="pt")
    if with_targets:
        labels = enc["input_ids"].clone()
        assistant = processor.tokenizer.convert_tokens_to_ids("<|assistant|>")
        start = (labels == assistant).int().argmax(dim=1)
        positions = torch.arange(labels.shape[1]).unsqueeze(0)
        labels[(positions <= start.unsqueeze(1)) | (enc["attention_mask"] == 0)] = -100
        enc["labels"] = labels
    return enc


@torch.no_grad()
def validation_accuracy(model, processor, n_per_family: int, seed: int, max_new_tokens: int = 48) -> dict[str, float]:
    model.eval()
    processor.tokenizer.padding_side = "left"
    acc = {}
    for family in FAMILIES:
        samples = [synthetic_sample(family, i, "val", seed) for i in range(n_per_family)]
        enc = encode_batch(processor, samples, with_targets=False)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        texts = processor.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        acc[family] = sum(is_correct(answer_from_trace(t), s.reference) for t, s in zip(texts, samples)) / n_per_family
    processor.tokenizer.padding_side = "right"
    model.train()
    return acc


def train(output: Path, steps: int, batch_size: int, lr: float, seed: int, eval_every: int, val_n: int,
          max_minutes: float, init_from: Path | None = None, step_offset: int = 0, num_heads: int | None = None,
          num_layers: int | None = None, hidden_size: int | None = None) -> dict:
    """The decoder's shape (``num_heads``, ``num_layers``, ``hidden_size``; None: the shipped 16, 4, 128) is a fresh
    model's; a run continued ``init_from`` a checkpoint keeps that one's, and a shape given that differs is an error."""
    torch.manual_seed(seed)
    processor = build_processor()
    shape = {"num_attention_heads": num_heads, "num_hidden_layers": num_layers, "hidden_size": hidden_size}
    if init_from:  # continue an earlier run (its checkpoint), on samples it has not seen
        from transformers import LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(init_from)
        text = model.config.text_config
        if differ := {k: (v, getattr(text, k)) for k, v in shape.items() if v is not None and v != getattr(text, k)}:
            raise ValueError(f"--init-from {init_from} has another decoder shape than asked: " + ", ".join(
                f"{k} {asked} asked, {found} there" for k, (asked, found) in differ.items()))
    else:
        model = build_model(processor.tokenizer, seed=seed, num_heads=num_heads or 16, num_layers=num_layers or 4,
                            hidden_size=hidden_size or 128)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    families = list(FAMILIES)
    best, history, t0 = None, [], time.time()
    bar = tqdm(range(steps), desc="train vattr-tiny")
    for step in bar:
        first = (step_offset + step) * batch_size
        samples = [synthetic_sample(families[(first + j) % len(families)], first + j, "train", seed) for j in range(batch_size)]
        enc = encode_batch(processor, samples, with_targets=True)
        labels = enc.pop("labels")
        think_close = processor.tokenizer.convert_tokens_to_ids(THINK_CLOSE)
        answer_from = (labels[:, 1:] == think_close).int().argmax(dim=1) + 1  # shifted-label index of the answer
        loss = weighted_loss(model(**enc).logits, labels, answer_from)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        out_of_time = (time.time() - t0) / 60 > max_minutes
        if (step + 1) % eval_every == 0 or step + 1 == steps or out_of_time:
            acc = validation_accuracy(model, processor, val_n, seed)
            history.append({"step": step + 1, "loss": loss.item(), "minutes": (time.time() - t0) / 60, "val_acc": acc})
            tqdm.write(json.dumps(history[-1]))
            if best is None or min(acc.values()) >= min(best["val_acc"].values()):
                best = history[-1]
                model.save_pretrained(output)
                processor.save_pretrained(output)
            if out_of_time or min(acc.values()) == 1.0 and step + 1 >= steps // 2:
                break
    report = {"seed": seed, "steps_run": history[-1]["step"], "batch_size": batch_size, "lr": lr,
              "init_from": str(init_from) if init_from else None, "step_offset": step_offset,
              "minutes": (time.time() - t0) / 60, "best": best, "history": history}
    (output / "training_report.json").write_text(json.dumps(report, indent=1))
    return report


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--val-n", type=int, default=60, help="validation samples per family")
    p.add_argument("--max-minutes", type=float, default=28.0, help="stop (and keep the best checkpoint) after this")
    p.add_argument("--init-from", type=Path, default=None, help="continue from this checkpoint instead of a fresh model")
    p.add_argument("--num-heads", type=int, default=None, help="decoder attention heads, a divisor of --hidden-size "
                   "(default 16; with --init-from, the checkpoint's)")
    p.add_argument("--num-layers", type=int, default=None, help="decoder layers (default 4; with --init-from, the checkpoint's)")
    p.add_argument("--hidden-size", type=int, default=None,
                   help="decoder width, its MLP twice that (default 128; with --init-from, the checkpoint's)")
    p.add_argument("--step-offset", type=int, default=0, help="skip the training samples an earlier run used")
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    report = train(a.output, a.steps, a.batch_size, a.lr, a.seed, a.eval_every, a.val_n, a.max_minutes,
                   a.init_from, a.step_offset, a.num_heads, a.num_layers, a.hidden_size)
    print(json.dumps(report["best"]))


if __name__ == "__main__":
    main()
