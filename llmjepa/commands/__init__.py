"""The command-line entry points: train (llmjepa-train: checks; arguments holds its flags as dataclasses;
config derives the run's configs; run assembles the run; hf_args passes TrainingArguments fields through),
parity (llmjepa-parity), evaluate (llmjepa-eval), sweep (llmjepa-sweep), and plots (their PNG files).
"""
