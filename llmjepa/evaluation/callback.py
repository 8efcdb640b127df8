"""--eval_accuracy: generation accuracy on N eval examples at each evaluation, logged through the Trainer.

run.py adds the callback with `trainer.add_callback`; at each evaluation it generates greedily for the
first N eval examples (under torchrun each rank takes i % world == rank and the counts are summed),
scores them as llmjepa-eval would (the scorer chosen by the eval file's base name) and calls
`trainer.log({"eval_accuracy": ..., "eval_accuracy_n": ...})`.
"""

from contextlib import contextmanager

import torch
from transformers import PreTrainedTokenizerBase, Trainer, TrainerCallback

from .. import distributed
from ..errors import UserError
from ..views.encoding import ViewConfig
from ..views.examples import Example
from .generation import ChoiceGenerator, GenerationSettings, HFGenerator, length_batches, prompt_ids
from .scorers import ScoreConfig, clean_prediction, gsm8k_answer, is_correct, scorer_for


@contextmanager
def generating(model: torch.nn.Module) -> None:
    """Eval mode and a standard attention for generate (the fast path's kernel takes packed streams);
    both restored afterwards."""
    was_training = model.training
    attention = getattr(model.config, "_attn_implementation", None)
    switch = attention not in (None, "sdpa", "eager", "flash_attention_2")
    if switch:
        model.set_attn_implementation("sdpa")
    model.eval()
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(attention)
        model.train(was_training)


class GenerationAccuracyCallback(TrainerCallback):
    def __init__(
        self,
        trainer: Trainer,
        examples: list[Example],
        tokenizer: PreTrainedTokenizerBase,
        cfg: ViewConfig,
        scorer: str,
        max_new_tokens: int,
        batch_size: int,
    ) -> None:
        self.trainer, self.examples, self.tokenizer = trainer, examples, tokenizer
        self.score = ScoreConfig(scorer=scorer)
        self.settings = GenerationSettings(max_new_tokens=max_new_tokens)
        self.batch_size = batch_size
        self.prompts = [prompt_ids(tokenizer, ex.messages, cfg)[-cfg.max_length :] for ex in examples]

    def counts(self, model: torch.nn.Module) -> tuple[int, int]:
        """(correct, n) over this rank's share of the examples."""
        rank, world = distributed.rank(), distributed.world_size()
        mine = [i for i in range(len(self.examples)) if i % world == rank]
        if self.score.scorer == "hellaswag":
            generator = ChoiceGenerator(model, self.tokenizer)
        else:
            generator = HFGenerator(model, self.tokenizer, self.settings)
        correct = 0
        with generating(model):
            for batch in length_batches(mine, [len(p) for p in self.prompts], self.batch_size):
                for i, ids in zip(batch, generator.generate([self.prompts[i] for i in batch])):
                    prediction = clean_prediction(self.tokenizer.decode(ids, skip_special_tokens=True))
                    correct += is_correct(self.score, prediction, self.examples[i].messages)
        return correct, len(mine)

    def on_evaluate(self, args, state, control, **kwargs) -> None:
        model = self.trainer.model
        correct, n = self.counts(model)
        correct, n = map(int, distributed.all_reduce_sums([correct, n], next(model.parameters()).device))
        self.trainer.log({"eval_accuracy": correct / n if n else 0.0, "eval_accuracy_n": n})


def add_accuracy_callback(
    trainer: Trainer,
    eval_examples: list[Example],
    tokenizer: PreTrainedTokenizerBase,
    cfg: ViewConfig,
    source: str,
    samples: int,
    max_new_tokens: int,
    batch_size: int,
) -> None:
    """Called from run.build_run when --eval_accuracy is given: generation accuracy on the first `samples`
    eval examples (from the file `source`, whose name picks the scorer) at each evaluation."""
    if not eval_examples:
        raise UserError("--eval_accuracy needs an eval set: --eval_file, or --data_file with --eval_split")
    if samples < 1 or max_new_tokens < 1:
        raise UserError("--eval_accuracy_samples and --eval_accuracy_max_new_tokens must be >= 1")
    scorer = scorer_for(source)
    if scorer == "spider":
        raise UserError("--eval_accuracy: spider needs its databases; score checkpoints with llmjepa-eval")
    examples = eval_examples[:samples]
    if scorer == "gsm8k":
        bad = next((ex for ex in examples if gsm8k_answer(ex.assistant) is None), None)
        if bad is not None:
            raise UserError(f"{bad.source}: gsm8k scoring needs the answer to end with a '\\n#### ' line")
    callback = GenerationAccuracyCallback(trainer, examples, tokenizer, cfg, scorer, max_new_tokens, batch_size)
    trainer.add_callback(callback)
