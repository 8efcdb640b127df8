"""Any local Hugging Face checkpoint works: save the tiny model, train from its directory."""

import json

from llmjepa.commands.train import main
from llmjepa.default_model import DEFAULT_MODEL_NAME, sample_data_path
from llmjepa.model import ModelSpec, load_model, load_tokenizer


def test_train_from_a_local_checkpoint_and_its_lora_and_pretrain_variants(tmp_path):
    tokenizer = load_tokenizer(DEFAULT_MODEL_NAME)
    model = load_model(ModelSpec(DEFAULT_MODEL_NAME, seed=3), tokenizer)
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    tokenizer.save_pretrained(ckpt)
    for extra in ([], ["--lora", "--lora_rank", "4"], ["--pretrain"]):
        out = tmp_path / f"out{len(extra)}"
        argv = [
            "--model_name",
            str(ckpt),
            "--train_file",
            str(sample_data_path("train")),
            "--num_prediction_steps",
            "2",
            "--predictors",
            "1",
            "--batch_size",
            "2",
            "--grad_accum",
            "1",
            "--max_train_steps",
            "3",
            "--output_dir",
            str(out),
            *extra,
        ]
        assert main(argv) == 0
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [1, 2, 3]
        assert all(r["pairs"] > 0 and r["loss"] == r["loss"] for r in records)  # NaN never passes
    # the checkpoint's weights were used: step-1 loss of the plain run differs from the random-init run
    plain = json.loads((tmp_path / "out0" / "metrics.jsonl").read_text().splitlines()[0])
    pretrain = json.loads((tmp_path / "out1" / "metrics.jsonl").read_text().splitlines()[0])  # ["--pretrain"]
    assert plain["loss"] != pretrain["loss"]
