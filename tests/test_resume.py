"""HF Trainer(resume_from_checkpoint=...) continues at the right sample of a Kogitune dataset."""

import hashlib

import pytest
from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

from kogitune.corpora import write_kjv_chapters
from kogitune.recipe import DatasetRecipe
from kogitune.tiny_model import tiny_gpt2
from kogitune.tokenizer import load_tokenizer
from kogitune.write import StoreOptions, store

BLOCK = 32


class RecordingCollator(DataCollatorForLanguageModeling):
    """The seed's collator, noting a digest of every batch it builds."""

    def __init__(self, tokenizer, seen: list) -> None:
        super().__init__(tokenizer, mlm=False)
        self.seen = seen

    def __call__(self, features, return_tensors=None):
        batch = super().__call__(features, return_tensors)
        self.seen.append(hashlib.sha256(batch["input_ids"].numpy().tobytes()).hexdigest())
        return batch


@pytest.mark.parametrize("sampling", ["random", "sequential"])
def test_resume_from_checkpoint_replays_nothing_and_skips_nothing(tmp_path, sampling):
    corpus = write_kjv_chapters(tmp_path / "kjv.jsonl", limit=20)
    tensor = tmp_path / "tensor"
    store([corpus], "gpt2", tensor, StoreOptions(block_size=128, workers=1), progress=False)
    tokenizer = load_tokenizer("gpt2")

    def train(max_steps: int, output: str, resume: str | None = None) -> list[str]:
        seen: list[str] = []
        args = TrainingArguments(
            output_dir=str(tmp_path / output),
            max_steps=max_steps,
            per_device_train_batch_size=4,
            save_strategy="steps",
            save_steps=3,
            report_to=[],
            use_cpu=True,
            seed=3,
            disable_tqdm=True,
            train_sampling_strategy=sampling,
        )
        trainer = Trainer(
            model=tiny_gpt2(tokenizer.vocab_size, BLOCK),
            args=args,
            train_dataset=DatasetRecipe([str(tensor)]).get_train_dataset(BLOCK),
            data_collator=RecordingCollator(tokenizer.to_hf(), seen),
        )
        trainer.train(resume_from_checkpoint=resume)
        return seen

    # The data loader builds one batch ahead of the step that uses it, so only the first batches count.
    uninterrupted = train(6, "full")[:6]
    resumed = train(6, "resumed", resume=str(tmp_path / "full" / "checkpoint-3"))[:3]
    assert len(set(uninterrupted)) == 6
    assert resumed == uninterrupted[3:]
