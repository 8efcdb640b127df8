"""The evaluation layer: generation (prompts, HF and vLLM generators), scorers (upstream evaluate.py's),
loading (a trained model, merged LoRA or adapters, for evaluation) and callback (--eval_accuracy during
training). llmjepa-eval's command is commands.evaluate.
"""
