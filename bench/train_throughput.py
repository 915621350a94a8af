"""Training throughput: our trainer vs a bare TRL SFTTrainer, same model, data and settings.

Both runs train the same conversations (the tiny example sources) for the same
number of optimizer steps at the same batch size, max length, precision and
learning rate; throughput is non-padding tokens per second of training
(``include_num_input_tokens_seen="non_padding"`` / the trainer's own
``train_runtime``). TRL computes the loss on every token (its
``assistant_only_loss`` refuses templates without generation markers), ours
on assistant tokens only; the forward/backward work is the same.

    python bench/train_throughput.py                       # tiny random llama, seconds
    python bench/train_throughput.py --model smollm2-135m-instruct --steps 6   # minutes on CPU

Prints one line per run and the ratio ours / TRL (> 1 means ours is faster).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
EXAMPLES = Path(__file__).resolve().parent.parent / "train" / "examples"


def sources() -> list:
    from harness.train.data import SourceSpec, load_source

    specs = (("math", "tiny_gsm8k.jsonl", "gsm8k"), ("code", "tiny_code_alpaca.json", "alpaca"),
             ("general", "tiny_sharegpt.json", "sharegpt"))
    return [c for n, p, f in specs for c in load_source(SourceSpec(n, str(EXAMPLES / p), f))[0]]


def model_dir(name: str | None, convs: list, tmp: Path) -> str:
    if name is None:
        from harness.train.tiny import build_tiny_llama, conversation_texts
        return str(build_tiny_llama(tmp / "tiny", conversation_texts(convs)))
    from harness.adapters import resolve_target
    from harness.core.models import ModelSpec
    return resolve_target(ModelSpec("hf", name))


def run_ours(path: str, convs: list, args: argparse.Namespace, tmp: Path) -> tuple[int, float]:
    from harness.train.sft import TrainConfig, build_rows, encode_all, fit, load_model

    cfg = TrainConfig(epochs=1, max_steps=args.steps, batch_size=args.batch_size, lr=2e-5, dtype=args.dtype,
                      max_length=args.max_length, logging_steps=args.steps, warmup_ratio=0.03)
    model, tok = load_model(path, cfg)
    encoded, _ = encode_all(tok, convs, cfg.max_length)
    trainer, _, state = fit(model, tok, build_rows(encoded, cfg), cfg, tmp / "ours")
    return int(state.num_input_tokens_seen), _runtime(trainer)


def run_trl(path: str, convs: list, args: argparse.Namespace, tmp: Path) -> tuple[int, float]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    data = Dataset.from_list([{"messages": c.to_dict()["messages"]} for c in convs])
    cfg = SFTConfig(output_dir=str(tmp / "trl"), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                    learning_rate=2e-5, warmup_steps=0.03, lr_scheduler_type="cosine", max_length=args.max_length,
                    bf16=args.dtype == "bf16", logging_steps=args.steps, save_strategy="no", report_to="none",
                    use_cpu=not torch.cuda.is_available(), disable_tqdm=True, packing=False,
                    include_num_input_tokens_seen="non_padding", seed=1234)
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok)
    trainer.train()
    return int(trainer.state.num_input_tokens_seen), _runtime(trainer)


def _runtime(trainer) -> float:
    logs = [h for h in trainer.state.log_history if "train_runtime" in h]
    return float(logs[-1]["train_runtime"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="checkpoint dir or embedded alias (default: a tiny random llama)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--repeats", type=int, default=2, help="alternate ours/TRL this many times; best of each")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    convs = sources()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        path = model_dir(args.model, convs, tmp)
        best: dict[str, float] = {}
        for r in range(args.repeats):
            for name, fn in (("ours", run_ours), ("trl", run_trl)):
                tokens, seconds = fn(path, convs, args, tmp / f"{name}{r}")
                rate = tokens / seconds
                best[name] = max(best.get(name, 0.0), rate)
                print(f"{name:4s} run {r + 1}: {tokens} non-padding tokens in {seconds:.2f} s = {rate:,.0f} tok/s")
    print(f"model {args.model or 'tiny-random-llama'} | {args.steps} steps x batch {args.batch_size} x "
          f"max {args.max_length} | {args.dtype}")
    print(f"best: ours {best['ours']:,.0f} tok/s, TRL SFTTrainer {best['trl']:,.0f} tok/s, "
          f"ratio ours/TRL = {best['ours'] / best['trl']:.2f}")


if __name__ == "__main__":
    main()
