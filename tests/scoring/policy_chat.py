"""Policy-side fixtures for the RL-trainer tests: chat templates written from their documentation, small
byte-level BPE policy tokenizers, and rollouts built the way OpenRLHF builds them.

OpenRLHF (v0.11.0, openrlhf/utils/agent.py:211-213, 250, 283; datasets/prompts_dataset.py:37) renders
``prompt = apply_chat_template(messages, tokenize=False, add_generation_prompt=True)``, tokenizes it with
``add_special_tokens=False``, appends the generated ids (vLLM keeps the EOS id) and sends
``query = tokenizer.decode(prompt_ids + response_ids, skip_special_tokens=False)`` with ``prompts=[prompt]``.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# ChatML as documented for Qwen/InternLM chat models (no default system message).
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Meta-Llama-3-8B-Instruct's tokenizer_config.json chat_template.
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Qwen2.5-style ChatML that inserts its own system message when the conversation has none.
QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
QWEN25 = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- else %}{{- '<|im_start|>system\n" + QWEN_DEFAULT_SYSTEM + "<|im_end|>\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)

# Llama-2 / Mistral [INST] layout: the system message is folded into the first user turn.
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set system = false %}"
    "{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system != false %}"
    "{% set content = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

SPECIALS = {
    "chatml": ("", "<|im_end|>", ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]),
    "qwen25": ("", "<|im_end|>", ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]),
    "llama3": (
        "<|begin_of_text|>",
        "<|eot_id|>",
        ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    ),
    "llama2": ("<s>", "</s>", ["<s>", "</s>"]),
}
TEMPLATES = {"chatml": CHATML, "qwen25": QWEN25, "llama3": LLAMA3, "llama2": LLAMA2}

CORPUS = [
    "What is 2 + 2 ? It 's 4 , is n't it ? Yes . The answer is four !",
    "Name a pet . A cat , a dog or a fish . Which one do you like ?",
    "Write a haiku about rivers and mountains , please .",
    "You are a careful assistant . Answer briefly and honestly .",
]


def make_policy_tokenizer(kind: str) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with ``kind``'s special tokens and chat template; Llama-3's cleans up
    spaces on decode (``clean_up_tokenization_spaces`` is true in its tokenizer_config.json)."""
    bos, eos, specials = SPECIALS[kind]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 5, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos or None,
        eos_token=eos,
        chat_template=TEMPLATES[kind],
        clean_up_tokenization_spaces=kind == "llama3",
    )


def openrlhf_rollout(
    tok: PreTrainedTokenizerFast, messages: list[dict], response: str
) -> tuple[str, str, str]:
    """``(query, prompt, response_as_decoded)`` as OpenRLHF's single-turn executor produces them."""
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tok(response, add_special_tokens=False)["input_ids"]
    query = tok.decode(prompt_ids + response_ids + [tok.eos_token_id], skip_special_tokens=False)
    return query, prompt, tok.decode(response_ids, skip_special_tokens=False)


def decode_cleans_up_spaces(tok: PreTrainedTokenizerFast) -> bool:
    """Whether ``tok.decode`` rewrites ``" ,"`` to ``","`` (``clean_up_tokenization_spaces``).

    transformers 4.x applies it to this BPE tokenizer; transformers 5 ignores the flag for BPE tokenizers
    ("Ignoring clean_up_tokenization_spaces=True for BPE tokenizer"), so there the decoded prompt is the
    rendered prompt and a plain prefix split would also work. Tests assert the clean-up happened only
    where the installed transformers does it.
    """
    text = "a , b"
    return tok.decode(tok.encode(text, add_special_tokens=False)) != text
