"""The execution layer: run one microbatch's plan through the model and return what the losses read.

protocol (Executed, the Executor type, `packs`) <- reference (padded rows, dense masks: upstream's
semantics) and fast (the packed stream, block-causal attention, no logits tensor); readout (--jepa_layer,
--entropy_filter: which hidden rows the pairs read); lm_head (the LM loss from hidden states in chunks);
losses (cross entropy and the JEPA pair losses).
"""
