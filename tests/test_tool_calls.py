"""Tool calls in conversations: an assistant turn's `tool_calls` and a tool message's `tool_call_id` and `name`
reach the chat template (they were dropped without a word before), so a template that renders them trains on
them; a template that ignores them gives the plan it gave before."""

import copy

from llmjepa import load_tokenizer
from llmjepa.default_model import DEFAULT_MODEL_NAME
from llmjepa.views.encoding import ViewConfig, encode_all
from llmjepa.views.examples import examples_from_records
from llmjepa.views.plan import IGNORE_INDEX

CALL = {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 2}}}
ROW = {
    "messages": [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "", "tool_calls": [CALL]},
        {"role": "tool", "content": "4", "tool_call_id": "call-1", "name": "add"},
        {"role": "assistant", "content": "2 + 2 = 4."},
    ]
}
# the embedded tokenizer's template, with an assistant turn's tool calls written as name(arguments)
TEMPLATE_WITH_CALLS = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{% for c in message.tool_calls or [] %}call {{ c.function.name }}({{ c.function.arguments | tojson }}) "
    "{% endfor %}{{ message['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def encode(tokenizer, row: dict):
    encoded, _ = encode_all(examples_from_records([copy.deepcopy(row)]), tokenizer, ViewConfig(predictors=1))
    return encoded[0]


def test_tool_calls_and_ids_are_kept() -> None:
    (example,) = examples_from_records([copy.deepcopy(ROW)])
    assert example.messages[1]["tool_calls"] == [CALL]
    assert example.messages[2]["tool_call_id"] == "call-1" and example.messages[2]["name"] == "add"
    assert "tool_calls" not in example.messages[0] and "name" not in example.messages[3]  # absent stays absent
    nulls = {"messages": [m | {"tool_calls": None, "name": None} for m in ROW["messages"][:1]] + ROW["messages"][3:]}
    (filled,) = examples_from_records([nulls])  # datasets fills a key a message lacks with None
    assert all(set(m) == {"role", "content"} for m in filled.messages)


def test_a_template_that_renders_tool_calls_trains_on_them() -> None:
    tokenizer = load_tokenizer(DEFAULT_MODEL_NAME)
    plain = encode(tokenizer, ROW)  # the embedded template ignores tool calls: the plan of the bare messages
    bare = {"messages": [{"role": m["role"], "content": m["content"]} for m in ROW["messages"]]}
    assert plain.input_ids == encode(tokenizer, bare).input_ids
    tokenizer.chat_template = TEMPLATE_WITH_CALLS
    with_calls = encode(tokenizer, ROW)
    labelled = tokenizer.decode([t for t in with_calls.labels if t != IGNORE_INDEX])
    assert 'call add({"a": 2, "b": 2})' in labelled  # the call is an assistant turn's: it trains
    assert with_calls.input_ids != plain.input_ids
