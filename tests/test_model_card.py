"""The model card beside every final model (README.md with Hub metadata) and --push_to_hub, without the network:
huggingface_hub's HfApi.create_repo and upload_folder are replaced, and the files the upload would send are
computed with huggingface_hub's own pattern filter."""

import json
from pathlib import Path

import huggingface_hub
import pytest
import yaml
from huggingface_hub.utils import filter_repo_objects

from llmjepa.commands.share import NOT_PUSHED, base_license, card_license, hub_model_id
from llmjepa.commands.train import main
from llmjepa.default_model import sample_data_path
from llmjepa.training.model_card import CardRecord, card_text

FEW_STEPS = ["--batch_size", "2", "--grad_accum", "1", "--max_train_steps", "3"]
JEPA = ["--num_prediction_steps", "2", "--predictors", "1", "--lbd", "0.3"]


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---", 2)[1])


# ---- the card's text ----------------------------------------------------------------------------------------
def test_card_metadata_names_only_what_the_hub_resolves() -> None:
    local = CardRecord(name="run", base_model="llmjepa/tiny-llama", license="apache-2.0", mode="step_jepa")
    meta = front_matter(card_text(local))
    assert meta["library_name"] == "llmjepa" and "llm-jepa" in meta["tags"] and "step-jepa" in meta["tags"]
    assert meta["license"] == "apache-2.0" and "base_model" not in meta and "datasets" not in meta
    hub = CardRecord(
        name="run",
        base_model="meta-llama/Llama-3.2-1B-Instruct",
        base_model_hub_id="meta-llama/Llama-3.2-1B-Instruct",
        datasets=["openai/gsm8k"],
        adapter=True,
    )
    text = card_text(hub)
    meta = front_matter(text)
    assert meta["base_model"] == "meta-llama/Llama-3.2-1B-Instruct" and meta["datasets"] == ["openai/gsm8k"]
    assert "license" not in meta and "lora" in meta["tags"]
    assert "load them with peft on top of `meta-llama/Llama-3.2-1B-Instruct`" in text
    for needed in ("arXiv:2509.14252", "Huang, Hai and LeCun, Yann and Balestriero, Randall", "## Citation"):
        assert needed in text


def test_hub_ids_and_licenses(tmp_path: Path) -> None:
    assert hub_model_id("llmjepa/tiny-llama") is None  # the embedded model
    assert hub_model_id(str(tmp_path)) is None and hub_model_id("./model") is None
    assert hub_model_id("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert base_license("llmjepa/tiny-llama") == "apache-2.0"
    (tmp_path / "README.md").write_text("---\nlicense: llama3.2\ntags: [x]\n---\n# a model\n")
    assert base_license(str(tmp_path)) == "llama3.2"
    assert card_license("# no metadata\n") is None and card_license("---\n: [\n---\n") is None


# ---- llmjepa-train: the card, and the push ------------------------------------------------------------------
@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> dict:
    """HfApi's repo creation and upload, recorded; nothing reaches the network."""
    calls: dict = {"uploads": []}

    def create_repo(self, repo_id, private=None, exist_ok=False, **kwargs):
        calls["create_repo"] = (repo_id, private, exist_ok)
        full = repo_id if "/" in repo_id else f"me/{repo_id}"  # the Hub puts a bare name in the token's namespace
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{full}")

    def upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, revision=None, commit_message=None, **kw):
        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        sent = list(filter_repo_objects(files, ignore_patterns=ignore_patterns))
        readme = (Path(folder_path) / "README.md").read_text(encoding="utf-8")
        calls["uploads"].append({"repo_id": repo_id, "files": sent, "readme": readme, "token": self.token})

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # anything unpatched that tried the network would fail
    return calls


def train(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_push_sends_the_model_and_its_card(tmp_path: Path, capsys: pytest.CaptureFixture, hub: dict) -> None:
    out_dir = tmp_path / "tiny-jepa"
    argv = [*JEPA, *FEW_STEPS, "--output_dir", out_dir, "--push_to_hub", "--hub_model_id", "me/tiny-jepa"]
    rc, out, err = train(capsys, *argv, "--hub_token", "hf_test", "--card_datasets", "openai/gsm8k")
    assert rc == 0, err[-3000:]
    assert hub["create_repo"] == ("me/tiny-jepa", None, True)
    (upload,) = hub["uploads"]
    assert upload["repo_id"] == "me/tiny-jepa" and upload["token"] == "hf_test"
    files = set(upload["files"])
    assert {"README.md", "model.safetensors", "config.json", "tokenizer.json", "metrics.jsonl"} <= files
    assert not [f for f in files if f.startswith(("checkpoint-", ".")) or f in ("run.json", "training_args.bin")]
    assert (out_dir / "checkpoint-3").is_dir()  # kept locally, not pushed
    assert "pushed" in out and "https://huggingface.co/me/tiny-jepa" in out

    text = upload["readme"]
    assert text == (out_dir / "README.md").read_text(encoding="utf-8")
    meta = front_matter(text)
    assert meta["datasets"] == ["openai/gsm8k"] and meta["license"] == "apache-2.0"
    for row in ("| lbd (JEPA weight) | 0.3 |", "| N (num_prediction_steps) | 2 |", "| optimizer steps | 3 |"):
        assert row in text, row
    last = json.loads((out_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert f"| loss | {last['loss']:.6g} |" in text and f"| mean_cos | {last['mean_cos']:.6g} |" in text
    assert "| jepa_pred_std |" in text  # the last log's embedding health
    assert "Mode `step_jepa`" in text and "arXiv:2509.14252" in text


def test_merged_lora_is_pushed_merged_with_its_card(tmp_path: Path, capsys: pytest.CaptureFixture, hub: dict) -> None:
    """--merge_lora used to save through its own path, past the push: now the merged model goes up, no adapters."""
    out_dir = tmp_path / "merged"
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("".join(sample_data_path("eval").read_text().splitlines(keepends=True)[:4]))
    argv = [*JEPA, *FEW_STEPS, "--lora", "--merge_lora", "--eval_file", eval_file, "--eval_steps", "3"]
    rc, _, err = train(capsys, *argv, "--output_dir", out_dir, "--push_to_hub", "--hub_token", "hf_test")
    assert rc == 0, err[-3000:]
    assert hub["create_repo"][0] == "merged"  # default: the folder's name, in the token's namespace
    (upload,) = hub["uploads"]
    assert upload["repo_id"] == "me/merged"
    assert "model.safetensors" in upload["files"]
    assert not [f for f in upload["files"] if f.startswith("adapter_")]
    text = upload["readme"]
    assert "merged into the base weights" in text and "| LoRA rank (alpha 2r) | 16 |" in text
    assert "Evaluation (the last one during training)" in text and "| eval_lm_loss |" in text


def test_every_final_model_gets_a_card(tmp_path: Path, capsys: pytest.CaptureFixture, hub: dict) -> None:
    rc, out, err = train(capsys, "--regular", *FEW_STEPS, "--output_dir", tmp_path / "sft")
    assert rc == 0, err[-3000:]
    text = (tmp_path / "sft" / "README.md").read_text(encoding="utf-8")
    assert "Mode `regular`" in text and "regular" in front_matter(text)["tags"]
    assert hub["uploads"] == []  # no --push_to_hub, no upload


def test_push_without_a_token_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    rc, _, err = train(capsys, *FEW_STEPS, "--output_dir", tmp_path / "out", "--push_to_hub")
    assert rc == 2
    assert err.strip().splitlines() == [
        "llmjepa-train: error: --push_to_hub: no Hugging Face token (run `hf auth login`, set HF_TOKEN, or give "
        "--hub_token)"
    ]
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_a_failed_push_is_one_line_and_keeps_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, hub: dict
) -> None:
    def refuse(self, **kwargs):
        raise ConnectionError("401 Client Error: Unauthorized")  # as a refused token or a lost network

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", refuse)
    out_dir = tmp_path / "out"
    argv = [*FEW_STEPS, "--output_dir", out_dir, "--push_to_hub", "--hub_model_id", "me/x", "--hub_token", "bad"]
    rc, _, err = train(capsys, *argv)
    assert rc == 4
    (line,) = err.strip().splitlines()[-1:]
    assert line.startswith(
        "llmjepa-train: error: --push_to_hub me/x: 401 Client Error: Unauthorized; the model and its card"
    )
    assert "Traceback" not in err and "--exclude 'checkpoint-*'" in line
    assert (out_dir / "model.safetensors").is_file() and (out_dir / "README.md").is_file()


def test_not_pushed_patterns_cover_the_local_files() -> None:
    files = ["checkpoint-3/model.safetensors", ".llmjepa-train.lock", ".partial-checkpoint-4/x", "run.json", "a.json"]
    assert list(filter_repo_objects(files, ignore_patterns=NOT_PUSHED)) == ["a.json"]


def test_library_push_to_hub_writes_llmjepas_card(tmp_path: Path, hub: dict) -> None:
    """JepaTrainer.push_to_hub (the Trainer's) writes its card through JepaTrainer.create_model_card: llmjepa's."""
    from transformers import TrainingArguments

    from llmjepa import JepaTrainer, LossConfig, ViewConfig, load_examples, load_model, load_tokenizer

    tokenizer = load_tokenizer("llmjepa/tiny-llama")
    rows = [{"messages": ex.messages} for ex in load_examples(sample_data_path("train"))[:8]]
    args = TrainingArguments(
        output_dir=str(tmp_path / "lib"), max_steps=2, per_device_train_batch_size=2, report_to="none",
        use_cpu=True, save_strategy="no", logging_steps=1, hub_model_id="me/lib", hub_token="hf_test",
    )  # fmt: skip
    trainer = JepaTrainer(
        model=load_model("llmjepa/tiny-llama", tokenizer),
        args=args,
        train_dataset=rows,
        processing_class=tokenizer,
        loss_config=LossConfig(lbd=0.2),
        view_config=ViewConfig(num_prediction_steps=2, predictors=1),
    )
    trainer.train()
    trainer.push_to_hub(dataset="openai/gsm8k")
    (upload,) = hub["uploads"]
    text = upload["readme"]
    assert upload["repo_id"] == "me/lib" and "model.safetensors" in upload["files"]
    meta = front_matter(text)
    assert meta["library_name"] == "llmjepa" and meta["datasets"] == ["openai/gsm8k"]
    assert "| lbd (JEPA weight) | 0.2 |" in text and "| N (num_prediction_steps) | 2 |" in text
    assert f"| loss | {trainer.history[-1]['loss']:.6g} |" in text and "arXiv:2509.14252" in text


def test_eval_results_go_into_the_card_once_per_data_set(tmp_path: Path) -> None:
    from llmjepa.training.model_card import add_eval_results

    card = tmp_path / "README.md"
    card.write_text(card_text(CardRecord(name="m", base_model="llmjepa/tiny-llama")), encoding="utf-8")
    first = {"dataset": "sums_eval.jsonl", "scorer": "sums", "n": 64, "correct": 10, "accuracy": 10 / 64}
    assert add_eval_results(tmp_path, first) == card
    assert add_eval_results(tmp_path, {**first, "correct": 53, "accuracy": 53 / 64}) == card  # replaces
    other_data = {**first, "dataset": "gsm8k_test.jsonl", "scorer": "gsm8k", "correct": 20}
    assert add_eval_results(tmp_path, other_data) == card  # adds a section beside
    text = card.read_text(encoding="utf-8")
    assert text.count("### llmjepa-eval on `sums_eval.jsonl`") == 1 and "| correct | 53 |" in text
    assert "| correct | 10 |" not in text and "### llmjepa-eval on `gsm8k_test.jsonl`" in text
    assert text.index("llmjepa-eval on") < text.index("## Citation")  # results before the citation
    assert front_matter(text)["library_name"] == "llmjepa"  # metadata intact
    other = tmp_path / "other"
    other.mkdir()
    (other / "README.md").write_text("---\nlibrary_name: transformers\n---\n# someone else's\n", encoding="utf-8")
    assert add_eval_results(other, first) is None  # another library's README is left as it is
    assert (other / "README.md").read_text(encoding="utf-8").endswith("# someone else's\n")
    assert add_eval_results(tmp_path / "nothing", first) is None


def test_llmjepa_eval_adds_its_result_to_the_trained_models_card(
    tmp_path: Path, capsys: pytest.CaptureFixture, hub: dict
) -> None:
    from llmjepa.commands.evaluate import main as evaluate

    rc, out, err = train(capsys, "--regular", *FEW_STEPS, "--output_dir", tmp_path / "sft")
    assert rc == 0, err[-3000:]
    argv = ["--model_name", str(tmp_path / "sft"), "--max_examples", "2", "--max_new_tokens", "4"]
    assert evaluate([*argv, "--output_dir", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert f"added the result to the model card {tmp_path / 'sft' / 'README.md'}" in out
    text = (tmp_path / "sft" / "README.md").read_text(encoding="utf-8")
    assert "### llmjepa-eval on `sums_eval.jsonl`" in text and "| n | 2 |" in text and "decoding greedy" in text
