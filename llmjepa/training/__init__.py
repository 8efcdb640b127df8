"""The training layer: JepaTrainer (a transformers.Trainer whose loss is gamma * LM + lbd * JEPA over view
plans), factory (what the library path makes when not given: tokenized datasets, predictor tokens, the
executor, the collator), callbacks (metrics.jsonl, --track_flop, Ctrl-C and SIGTERM) and debug (--debug).
"""
