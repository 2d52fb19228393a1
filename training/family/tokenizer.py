"""A small byte-level BPE tokenizer (digits always split one by one) with a chat template.

Saved as ``tokenizer.json`` through ``PreTrainedTokenizerFast``, so ``AutoTokenizer`` loads it
and the transformers and vLLM backends render chats with its template (system, user and
assistant turns, each closed by ``<|end|>``, the end-of-sequence token).
"""

from __future__ import annotations

from collections.abc import Iterable

SPECIAL_TOKENS = ("<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>")
PAD, END = SPECIAL_TOKENS[0], SPECIAL_TOKENS[1]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role']) }}{% endif %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int):  # noqa: ANN201 (PreTrainedTokenizerFast)
    """A byte-level BPE of ``vocab_size`` tokens learnt from ``texts``, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=END)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def chat_ids(tokenizer, messages: list[dict[str, str]], answer: str | None = None) -> tuple[list[int], int]:  # noqa: ANN001
    """Token ids of ``messages`` and the assistant cue, then ``answer`` and ``<|end|>`` when given;
    and how many leading ids are the prompt."""
    prompt = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"])
    if answer is None:
        return prompt, len(prompt)
    completion = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt + completion, len(prompt)
