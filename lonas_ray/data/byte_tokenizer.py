"""A byte-level tokenizer that fits the 256-token vocabulary of the tiny random-init models.

So that tests and tiny runs go through exactly the code path of a real model
(``tokenizer(...)``, ``pad_token_id``, ``eos_token_id``, ``save_pretrained``,
``AutoTokenizer.from_pretrained``), tiny models get a real
``PreTrainedTokenizerFast`` built with ``tokenizers``:

* ids 0..252 are the bytes 0x00..0xFC of the text's UTF-8 encoding, id = byte
  value (a byte-level BPE model with no merges: every byte is one token);
* ids 253, 254, 255 are ``<pad>``, ``<s>`` (bos), ``</s>`` (eos).

Why this is lossless: UTF-8 never produces the bytes 0xF5..0xFF, so the three
bytes given up for specials (0xFD, 0xFE, 0xFF) cannot occur in the encoding
of any Python ``str`` and every text round-trips exactly, with no fallback
token. Special-token text inside the input (a literal ``"</s>"``) is encoded
as plain bytes (``split_special_tokens``), so that round-trips too. Decoding
ids that do not form valid UTF-8 (a model's random output) gives U+FFFD
replacement characters. The tokenizer adds no bos/eos by itself.
"""

from __future__ import annotations

from functools import lru_cache

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
BYTE_IDS = 253  # bytes 0x00..0xFC
VOCAB_SIZE = 256


@lru_cache(maxsize=1)
def _byte_chars() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte (what the ByteLevel pre-tokenizer emits)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = dict(zip(printable, map(chr, printable)))
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh byte-level tokenizer over 256 ids (253 bytes + pad, bos, eos); see the module doc."""
    chars = _byte_chars()
    vocab = {chars[b]: b for b in range(BYTE_IDS)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(t, special=True) for t in (PAD, BOS, EOS)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, bos_token=BOS, eos_token=EOS, split_special_tokens=True,
        padding_side="right",
    )
    assert len(tokenizer) == VOCAB_SIZE and tokenizer.convert_tokens_to_ids(EOS) == VOCAB_SIZE - 1
    return tokenizer
