"""The seed's training snippet, unchanged, on a stored tensor: HF Trainer + DataCollatorForLanguageModeling."""

from statistics import mean

from kogitune.corpora import write_kjv_chapters
from kogitune.recipe import DatasetRecipe
from kogitune.tiny_model import tiny_gpt2, train_steps
from kogitune.tokenizer import load_tokenizer
from kogitune.write import StoreOptions, store


def test_hf_trainer_loss_falls_on_a_stored_tensor(tmp_path):
    """A tiny GPT-2 trained 40 steps from DatasetRecipe has finite losses that fall clearly."""
    corpus = write_kjv_chapters(tmp_path / "kjv.jsonl", limit=150)
    tensor = tmp_path / "tensor"
    store([corpus], "gpt2", tensor, StoreOptions(block_size=256, workers=1), progress=False)
    tokenizer = load_tokenizer("gpt2")

    train_dataset = DatasetRecipe([str(tensor)]).get_train_dataset(block_size=64)
    assert train_dataset[0]["input_ids"].shape == (64,)
    model = tiny_gpt2(tokenizer.vocab_size, block_size=64)
    losses = train_steps(model, train_dataset, tokenizer.to_hf(), str(tmp_path / "run"), steps=40, batch_size=4)

    assert len(losses) == 40
    assert losses[0] > 10.0, "an untrained model over 50k tokens starts near ln(50257) = 10.8"
    assert mean(losses[-5:]) < mean(losses[:5]) - 1.5
