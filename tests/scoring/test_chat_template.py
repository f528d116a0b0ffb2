"""Chat templates taken off OpenRLHF-shaped texts: prompt contents and the bare response come back."""

from __future__ import annotations

import json

import pytest

from megatron_polar.scoring.chat_template import ChatTemplate, ChatTemplateError, RolloutParser, align_prefix
from tests.scoring.policy_chat import (
    LLAMA2,
    QWEN25,
    QWEN_DEFAULT_SYSTEM,
    decode_cleans_up_spaces,
    make_policy_tokenizer,
    openrlhf_rollout,
)

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 2 ?"}],
    [{"role": "system", "content": "Be brief ."}, {"role": "user", "content": "Name a pet , please ."}],
    [
        {"role": "user", "content": "Name a pet ."},
        {"role": "assistant", "content": "A cat , or a dog ."},
        {"role": "user", "content": "Which one do you like ? It 's hard !"},
    ],
    [
        {"role": "system", "content": "You are a careful assistant ."},
        {"role": "user", "content": "Write a haiku ."},
        {"role": "assistant", "content": "Rivers and mountains ."},
        {"role": "user", "content": "Another <|im_start|> one ?"},
        {"role": "assistant", "content": "No ."},
        {"role": "user", "content": "Please ! Multi\nline\n\ncontent ."},
    ],
]
RESPONSES = ["It 's 4 , is n't it ?", "A dog .\nOr a fish !", "Yes"]


def _contents(messages):
    return "\n".join(m["content"] for m in messages)


@pytest.mark.parametrize("kind", ["chatml", "llama3"])
def test_builtin_templates_recover_prompt_and_response(kind):
    tok = make_policy_tokenizer(kind)
    parser = RolloutParser()
    mismatched = 0
    for messages in CONVERSATIONS:
        for response in RESPONSES:
            query, prompt, decoded = openrlhf_rollout(tok, messages, response)
            mismatched += not query.startswith(prompt)
            rollout = parser.split(query, prompt)
            assert rollout is not None, (query, prompt)
            assert rollout.template == kind
            assert rollout.prompt == _contents(messages)
            assert rollout.response == decoded
    if kind == "llama3" and decode_cleans_up_spaces(tok):  # a prefix split would have failed on these
        assert mismatched == len(CONVERSATIONS) * len(RESPONSES)


def test_template_from_tokenizer_dir_drops_the_system_message_it_inserts(tmp_path):
    tok = make_policy_tokenizer("qwen25")
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": QWEN25, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    )
    parser = RolloutParser([ChatTemplate.load(str(tmp_path))])
    query, prompt, decoded = openrlhf_rollout(tok, CONVERSATIONS[2], RESPONSES[0])
    assert QWEN_DEFAULT_SYSTEM in prompt
    rollout = parser.split(query + "<|endoftext|>", prompt)
    assert rollout.template == str(tmp_path)
    assert rollout.prompt == _contents(CONVERSATIONS[2]) and rollout.response == decoded
    # its own system message is content
    query, prompt, decoded = openrlhf_rollout(tok, CONVERSATIONS[3], RESPONSES[1])
    assert parser.split(query, prompt).prompt == _contents(CONVERSATIONS[3])
    # the built-in ChatML cannot know the system message is the template's: it keeps it
    query, prompt, _ = openrlhf_rollout(tok, CONVERSATIONS[0], RESPONSES[0])
    assert RolloutParser().split(query, prompt).prompt == QWEN_DEFAULT_SYSTEM + "\n" + _contents(
        CONVERSATIONS[0]
    )


def test_template_from_jinja_file_folds_system_into_first_turn(tmp_path):
    path = tmp_path / "llama2.jinja"
    path.write_text(LLAMA2)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": LLAMA2, "bos_token": {"content": "<s>"}, "eos_token": "</s>"})
    )
    tok = make_policy_tokenizer("llama2")
    for spec in (str(tmp_path / "tok"), str(path)):
        parser = RolloutParser([ChatTemplate.load(spec)])
        for messages in CONVERSATIONS:
            query, prompt, decoded = openrlhf_rollout(tok, messages, RESPONSES[1])
            rollout = parser.split(query, prompt)
            assert rollout.prompt == _contents(messages), spec
            # a bare Jinja file knows no EOS: the end of turn it renders (" </s>" after a reply) is removed
            assert rollout.response == decoded


def test_date_stamped_system_block_matches_any_date():
    source = (
        "{{ bos_token }}{% set date = strftime_now('%d %b %Y') %}"
        "<|start_header_id|>system<|end_header_id|>\n\nToday Date: {{ date }}\n\n"
        "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{% set rest = messages[1:] %}"
        "{% else %}{% set rest = messages %}{% endif %}<|eot_id|>"
        "{% for m in rest %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
        "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    )
    parser = RolloutParser(
        [ChatTemplate(source, "llama31", {"bos_token": "<|begin_of_text|>"}, ("<|eot_id|>",))]
    )
    prompt = (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nToday Date: 02 Jan 2031\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    rollout = parser.split(prompt + "hello<|eot_id|>", prompt)
    assert (rollout.template, rollout.prompt, rollout.response) == ("llama31", "hi", "hello")


def test_plain_prompts_align_up_to_whitespace_and_lose_their_eos():
    parser = RolloutParser()
    assert align_prefix("What is 2 + 2 ? Answer :", "What is 2 + 2? Answer: 4") == len(
        "What is 2 + 2? Answer:"
    )
    rollout = parser.split("Question : 2+2 ?\nAnswer : 4<|im_end|>", "Question : 2+2 ?\nAnswer :")
    assert (rollout.template, rollout.prompt, rollout.response) == (None, "Question : 2+2 ?\nAnswer :", " 4")
    assert parser.split("something else entirely", "Question: 2+2?") is None


def test_left_truncated_prompt_still_splits_at_the_last_header():
    tok = make_policy_tokenizer("chatml")
    query, prompt, decoded = openrlhf_rollout(tok, CONVERSATIONS[2], RESPONSES[1])
    cut = query[query.index("<|im_start|>assistant") :]  # the trainer kept only the prompt's last tokens
    rollout = RolloutParser().split(cut, prompt)
    assert rollout.prompt == _contents(CONVERSATIONS[2]) and rollout.response == decoded


def test_bad_template_specs_name_the_problem(tmp_path):
    with pytest.raises(ChatTemplateError, match="--chat-template 'nope'"):
        ChatTemplate.load("nope")
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ChatTemplateError, match="no chat template"):
        ChatTemplate.load(str(tmp_path))
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}")
    with pytest.raises(ChatTemplateError, match="bad.jinja: invalid Jinja"):
        ChatTemplate.load(str(bad))


def test_long_conversations_parse_to_every_turn():
    tok = make_policy_tokenizer("llama3")
    messages = [{"role": "system", "content": "Be brief ."}]
    for k in range(20):
        messages += [
            {"role": "user", "content": f"Question {k} ?"},
            {"role": "assistant", "content": f"Answer {k} ."},
        ]
    messages.append({"role": "user", "content": "Last one ?"})
    query, prompt, decoded = openrlhf_rollout(tok, messages, RESPONSES[0])
    rollout = RolloutParser().split(query, prompt)
    assert rollout.prompt == _contents(messages) and rollout.response == decoded
