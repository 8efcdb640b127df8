"""The command-line entry points: train (llmjepa-train: flags and checks; run assembles the run from
them; hf_args passes TrainingArguments fields through), parity (llmjepa-parity), evaluate (llmjepa-eval),
sweep (llmjepa-sweep), and plots (their PNG files).
"""
