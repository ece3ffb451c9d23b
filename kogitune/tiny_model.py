"""A tiny causal language model and a few HF `Trainer` steps, for the demo and the tests (no hub download)."""

from __future__ import annotations

import math


def tiny_gpt2(vocab_size: int, block_size: int, seed: int = 0):
    """A 2-layer GPT-2 built from a config: enough to show a falling loss on CPU in seconds."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_positions=block_size, n_embd=64, n_layer=2, n_head=2)
    return GPT2LMHeadModel(config)


def train_steps(
    model,
    train_dataset,
    tokenizer,
    output_dir: str,
    steps: int,
    batch_size: int = 8,
    learning_rate: float = 2e-3,
    seed: int = 0,
) -> list[float]:
    """Run the seed's `Trainer(...)` call for `steps` steps on CPU and return the logged training losses."""
    from transformers import DataCollatorForLanguageModeling, PrinterCallback, Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_steps=0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        train_dataset=train_dataset,
        args=args,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    if not losses or not all(math.isfinite(loss) for loss in losses):
        raise RuntimeError(f"training produced non-finite or no losses: {losses}")
    return losses
