"""Logit KD refuses teacher/student pairs that do not share one vocabulary."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from kdist.train.tokenizers_compat import VocabularyMismatch, check_logit_kd_compatible


def word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    vocab = {word: i for i, word in enumerate(["<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


WORDS = ["a", "b", "c", "d"]


def test_same_vocabulary_passes_and_compares_the_shared_head_rows():
    assert check_logit_kd_compatible(word_tokenizer(WORDS), word_tokenizer(WORDS), 5, 5) == 5
    # heads padded past the tokenizer (different padding) compare the common rows
    assert check_logit_kd_compatible(word_tokenizer(WORDS), word_tokenizer(WORDS), 64, 8) == 8


def test_different_size_is_refused_and_suggests_sequence_kd():
    with pytest.raises(VocabularyMismatch) as err:
        check_logit_kd_compatible(word_tokenizer(WORDS), word_tokenizer(WORDS + ["e"]), 5, 6)
    message = str(err.value)
    assert "differ in size (teacher 5, student 6)" in message
    assert "sequence-level KD" in message and "\n" not in message


def test_same_size_but_different_ids_is_refused():
    with pytest.raises(VocabularyMismatch, match="token 'a' is id 1 in the teacher and is id 2"):
        check_logit_kd_compatible(word_tokenizer(WORDS), word_tokenizer(["b", "a", "c", "d"]), 5, 5)


def test_missing_token_is_refused():
    with pytest.raises(VocabularyMismatch, match="'d' is id 4 in the teacher and is missing"):
        check_logit_kd_compatible(word_tokenizer(WORDS), word_tokenizer(["a", "b", "c", "x"]), 5, 5)


def test_head_smaller_than_vocabulary_is_refused():
    with pytest.raises(VocabularyMismatch, match="LM head is smaller than the vocabulary"):
        check_logit_kd_compatible(word_tokenizer(WORDS), word_tokenizer(WORDS), 5, 4)
