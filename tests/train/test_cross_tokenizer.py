"""Cross-tokenizer logit KD: span alignment on hand-made tokenizations, the vocabulary map, and
the two losses (uld, align) against direct implementations of their definitions."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from support.tiny_models import with_biased_head

from kdist.train.cross_tokenizer import (
    SpanGroup,
    aligned_positions,
    ends_of_pieces,
    span_groups,
    tokenize_pair,
    vocabulary_map,
)
from kdist.train.losses import (
    IGNORE_INDEX,
    CrossLogits,
    CrossTeacher,
    KDParams,
    chunked_kd_loss,
    kd_loss,
    uld_distance,
)


def groups(teacher: list[str], student: list[str]) -> list[tuple[list[str], list[str]]]:
    assert "".join(teacher) == "".join(student)
    found = span_groups(ends_of_pieces(teacher), ends_of_pieces(student))
    return [(teacher[g.teacher_start:g.teacher_end], student[g.student_start:g.student_end])
            for g in found]


# --- span alignment -------------------------------------------------------------------------


def test_a_word_split_three_ways_is_one_group():
    teacher = ["The", " unbelievable", " day"]
    student = ["The", " un", "believ", "able", " day"]
    assert groups(teacher, student) == [
        (["The"], ["The"]), ([" unbelievable"], [" un", "believ", "able"]), ([" day"], [" day"])]
    # the first tokens of each group start at the same character; the inner ones have none
    assert aligned_positions(ends_of_pieces(teacher), ends_of_pieces(student)) == [0, 1, -1, -1, 2]


def test_one_word_split_three_different_ways():
    """The teacher splits in two, the student in three, at other places: one group."""
    teacher = [" unbel", "ievable", "!"]
    student = [" un", "believ", "able", "!"]
    assert groups(teacher, student) == [([" unbel", "ievable"], [" un", "believ", "able"]),
                                        (["!"], ["!"])]
    assert aligned_positions(ends_of_pieces(teacher), ends_of_pieces(student)) == [0, -1, -1, 2]


def test_boundaries_that_cross_merge_until_both_agree():
    teacher = ["ab", "cd", "ef"]
    student = ["a", "bc", "de", "f"]
    assert groups(teacher, student) == [(["ab", "cd", "ef"], ["a", "bc", "de", "f"])]
    assert span_groups(ends_of_pieces(["x"]), ends_of_pieces(["x"])) == [SpanGroup(0, 1, 0, 1)]


def test_different_endings_leave_one_last_group():
    """After the content the chat formats differ (end-of-turn markers): the last group holds
    both remainders, and their first tokens are aligned."""
    teacher_ends = [1, 2, 9]  # "B", ")", "<|end|>"
    student_ends = [1, 2, 6, 8]  # "B", ")", "</s>", "\n"
    assert aligned_positions(teacher_ends, student_ends) == [0, 1, 2, -1]


# --- real tokenizers --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_tokenizers(tmp_path_factory):
    from kdist import modelkit
    from kdist.data import synthetic

    corpus = synthetic.vocabulary_text() + [
        q.user_message() for _, _, q in synthetic.generate({"train": 100}, seed=0)]
    base = tmp_path_factory.mktemp("tokenizers")
    student = modelkit.train_tokenizer(corpus, 600, Path(base / "student"))
    teacher = modelkit.train_tokenizer(corpus, 330, Path(base / "teacher"))  # splits words
    return teacher, student


def test_tokenize_pair_aligns_tokens_that_start_at_the_same_character(two_tokenizers):
    teacher, student = two_tokenizers
    messages = [{"role": "user", "content": "Which item is a fruit? A) dog B) apple"},
                {"role": "assistant", "content": "B) apple peach"}]
    pair = tokenize_pair(student, teacher, messages, 96)
    answer = [i for i, label in enumerate(pair.labels) if label != IGNORE_INDEX]
    aligned = {i: pair.align[i] for i in answer if pair.align[i] >= 0}
    assert [pair.align[i] for i in range(len(pair.labels)) if i not in answer] == \
        [-1] * (len(pair.labels) - len(answer))
    # what each aligned pair's text before it is, in both: the same prefix of the answer
    content = messages[-1]["content"]
    for s_pos, t_pos in aligned.items():
        s_before = student.decode(pair.input_ids[answer[0]:s_pos])
        t_first = pair.align[answer[0]]
        t_before = teacher.decode(pair.teacher_input_ids[t_first:t_pos])
        assert s_before == t_before and content.startswith(s_before) or s_before == content
    # the first answer token and the end of turn are aligned; the student has " apple" whole
    # where the teacher splits it, so the teacher's inner pieces get no student counterpart
    assert answer[0] in aligned and answer[-1] in aligned
    assert student.decode([pair.input_ids[answer[-1]]]) == "<|end|>"
    assert teacher.decode([pair.teacher_input_ids[aligned[answer[-1]]]]) == "<|end|>"
    assert len(pair.teacher_input_ids) > len(pair.input_ids)


def test_vocabulary_map_matches_strings(two_tokenizers):
    teacher, student = two_tokenizers
    mapping = vocabulary_map(teacher, student, len(teacher) + 3)  # a head padded past the vocab
    assert mapping.shape == (len(teacher) + 3,) and (mapping[len(teacher):] == -1).all()
    for token, index in list(teacher.get_vocab().items())[:200]:
        text = teacher.convert_tokens_to_string([token])
        if mapping[index] >= 0:
            assert student.convert_ids_to_tokens(int(mapping[index])) is not None
            assert student.convert_tokens_to_string(
                [student.convert_ids_to_tokens(int(mapping[index]))]) == text
    assert mapping[teacher.eos_token_id] == student.eos_token_id


# --- the losses against their definitions -------------------------------------------------------

N, H, HT, VS, VT = 23, 8, 6, 17, 29


@pytest.fixture(autouse=True)
def float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def cross_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g, requires_grad=True)
    weight = torch.randn(VS, H, generator=g).requires_grad_()
    labels = torch.randint(0, VS, (N,), generator=g)
    labels[::4] = IGNORE_INDEX
    t_hidden, t_weight = torch.randn(N, HT, generator=g), torch.randn(VT, HT, generator=g)
    aligned = torch.rand(N, generator=g) < 0.7
    # teacher ids 0..VT-1 -> student ids: some shared strings (two teacher ids on one student
    # id: merged), the rest unmapped
    vocab_map = torch.full((VT,), -1)
    vocab_map[:12] = torch.tensor([0, 1, 2, 3, 3, 5, 6, 7, 8, 9, 9, 11])
    return hidden, weight, labels, t_hidden, t_weight, aligned, vocab_map


def uld_by_definition(s_logits, t_logits, t):
    """sum_i |sorted p_s - sorted p_t|, vectors padded with zeros, one position at a time."""
    out = []
    for s_row, t_row in zip(s_logits, t_logits):
        p_s = sorted(torch.softmax(s_row / t, -1).unbind(), key=lambda x: -x.item())
        p_t = sorted(torch.softmax(t_row / t, -1).tolist(), reverse=True)
        size = max(len(p_s), len(p_t))
        p_s += [torch.zeros(())] * (size - len(p_s))
        p_t += [0.0] * (size - len(p_t))
        out.append(sum((a - b).abs() for a, b in zip(p_s, p_t)))
    return torch.stack(out)


def align_by_definition(s_logits, t_logits, vocab_map, t, kind):
    """The teacher's probabilities summed onto the student's ids of the same string, plus one
    bucket each for what maps nowhere (teacher) and what nothing maps to (student)."""
    out = []
    covered = sorted({int(i) for i in vocab_map if i >= 0})
    for s_row, t_row in zip(s_logits, t_logits):
        p_s, p_t = torch.softmax(s_row / t, -1), torch.softmax(t_row / t, -1)
        teacher = [sum(p_t[j] for j in range(VT) if vocab_map[j] == i) for i in covered]
        teacher.append(sum(p_t[j] for j in range(VT) if vocab_map[j] < 0))
        student = [p_s[i] for i in covered]
        student.append(sum(p_s[i] for i in range(VS) if i not in covered))
        p, q = (teacher, student) if kind == "forward_kl" else (student, teacher)
        out.append(sum(a * torch.log(a / b) for a, b in zip(p, q)))
    return torch.stack(out)


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_uld_equals_its_definition_with_gradients(t):
    hidden, weight, labels, t_hidden, t_weight, aligned, _ = cross_batch(1)
    n = int((labels != IGNORE_INDEX).sum())
    alpha = 0.3
    params = KDParams(alpha=alpha, temperature=t, cross="uld")
    s_logits, t_logits = hidden @ weight.T, t_hidden @ t_weight.T
    mask = labels != IGNORE_INDEX
    ce = torch.nn.functional.cross_entropy(s_logits[mask], labels[mask], reduction="sum")
    d = (uld_by_definition(s_logits[mask], t_logits[mask], t) * aligned[mask]).sum()
    expected = (alpha * ce + (1 - alpha) * t * t * d) / n
    got = chunked_kd_loss(hidden, weight, labels,
                          CrossTeacher(t_hidden, t_weight, aligned), params, n, chunk_size=5)
    assert got.loss.item() == pytest.approx(expected.item(), rel=1e-10)
    assert got.kd.item() == pytest.approx(d.item() / n, rel=1e-10)
    for a, b in zip(torch.autograd.grad(got.loss, (hidden, weight)),
                    torch.autograd.grad(expected, (hidden, weight))):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_a_teacher_of_another_vocabulary_needs_a_cross_mode_and_align_its_map():
    hidden, weight, labels, t_hidden, t_weight, aligned, _ = cross_batch(2)
    teacher = CrossLogits(t_hidden @ t_weight.T, aligned)
    with pytest.raises(ValueError, match=r"^a teacher with another vocabulary needs KDParams.cross \(uld, align\)$"):
        kd_loss(hidden @ weight.T, labels, teacher, KDParams(alpha=0.5), 1)
    with pytest.raises(ValueError, match="^cross-tokenizer align needs the teacher -> student vocab_map$"):
        kd_loss(hidden @ weight.T, labels, teacher, KDParams(alpha=0.5, cross="align"), 1)


def test_uld_pads_whichever_vocabulary_is_shorter():
    short, long = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.25, 0.5, 0.25]])
    # sorted: [1, 0, 0] against [0.5, 0.25, 0.25]
    assert uld_distance(short, long).tolist() == [1.0]
    assert uld_distance(long, short).tolist() == [1.0]


def test_uld_is_zero_for_a_permuted_distribution_and_at_most_two():
    logits = torch.randn(4, VS)
    permuted = logits[:, torch.randperm(VS)]
    params = KDParams(alpha=0.0, cross="uld")
    aligned = torch.ones(4, dtype=torch.bool)
    same = kd_loss(logits, torch.zeros(4, dtype=torch.long), CrossLogits(permuted, aligned),
                   params, 1)
    assert same.kd.item() == pytest.approx(0.0, abs=1e-12)
    far = kd_loss(torch.tensor([[50.0, 0, 0]]), torch.zeros(1, dtype=torch.long),
                  CrossLogits(torch.tensor([[0.0] * 5]), aligned[:1]), params, 1)
    assert 0 < far.kd.item() <= 2.0


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl"])
def test_align_equals_its_definition_with_gradients(kind):
    hidden, weight, labels, t_hidden, t_weight, aligned, vocab_map = cross_batch(2)
    n = int((labels != IGNORE_INDEX).sum())
    t = 1.5
    params = KDParams(alpha=0.0, temperature=t, divergence=kind, cross="align")
    s_logits, t_logits = hidden @ weight.T, t_hidden @ t_weight.T
    mask = labels != IGNORE_INDEX
    d = (align_by_definition(s_logits[mask], t_logits[mask], vocab_map, t, kind)
         * aligned[mask]).sum()
    expected = t * t * d / n
    got = chunked_kd_loss(hidden, weight, labels,
                          CrossTeacher(t_hidden, t_weight, aligned, vocab_map), params, n,
                          chunk_size=4)
    assert got.loss.item() == pytest.approx(expected.item(), rel=1e-9)
    for a, b in zip(torch.autograd.grad(got.loss, (hidden, weight)),
                    torch.autograd.grad(expected, (hidden, weight))):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


def test_align_with_identical_vocabularies_is_plain_logit_kd():
    """Every id maps to itself: no tail on either side, the divergence of full distributions."""
    g = torch.Generator().manual_seed(3)
    s, tl = torch.randn(6, VS, generator=g), torch.randn(6, VS, generator=g)
    labels = torch.randint(0, VS, (6,), generator=g)
    params = KDParams(alpha=0.0, temperature=2.0, divergence="jsd", beta=0.3)
    plain = kd_loss(s, labels, tl, params, 6)
    cross = kd_loss(s, labels, CrossLogits(tl, torch.ones(6, dtype=torch.bool), torch.arange(VS)),
                    KDParams(alpha=0.0, temperature=2.0, divergence="jsd", beta=0.3,
                             cross="align"), 6)
    assert cross.loss.item() == pytest.approx(plain.loss.item(), rel=1e-9, abs=1e-12)
    assert math.isfinite(cross.loss.item())


def _tiny_llama(seed, vocab, hidden):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32,
        tie_word_embeddings=False)).to(torch.float64)


def _softcapped_biased_gemma2(seed, vocab, hidden):
    """A teacher whose logits are bias-shifted and soft-capped after its head."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(seed)
    model = Gemma2ForCausalLM(Gemma2Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=hidden // 2,
        max_position_embeddings=32, final_logit_softcapping=3.0))
    return with_biased_head(model).to(torch.float64)


@pytest.mark.parametrize(("teacher_kind", "t_len", "t_align"), [
    # the teacher's rows span 1..11 of 12 tokens: position 0 is never aligned
    ("llama", 12, ([5, 6, 8, 10, 11], [3, 7, 9])),
    # a sequence length unlike the hidden size; alignments to teacher token 1 (read from the
    # teacher's state 0) and to token 0 (the first token, which nothing predicts: left out)
    ("gemma2", 10, ([1, 2, 4, 6, 9], [0, 5, 8])),
])
def test_objective_reads_the_teacher_on_its_own_tokens(teacher_kind, t_len, t_align):
    """DistillationObjective's cross path == the definition on the two models' full logits,
    the teacher's logits (bias and soft-cap included) taken one position before each aligned
    teacher token."""
    from kdist.train.objective import DistillationObjective, count_loss_tokens

    build = {"llama": _tiny_llama, "gemma2": _softcapped_biased_gemma2}[teacher_kind]
    student, teacher = _tiny_llama(0, VS, 16), build(1, VT, 12)
    ids = torch.randint(1, VS, (2, 9))
    labels = ids.clone()
    labels[:, :4] = IGNORE_INDEX
    t_ids = torch.randint(1, VT, (2, t_len))
    align = torch.full((2, 9), -1)
    align[0, 4:9] = torch.tensor(t_align[0])
    align[1, 4:7] = torch.tensor(t_align[1])
    params = KDParams(alpha=0.0, temperature=1.0, cross="uld")
    n = count_loss_tokens(labels)
    loss, _, kd = DistillationObjective(student, params, teacher)(
        ids, labels, n, teacher_input_ids=t_ids, teacher_attention_mask=torch.ones_like(t_ids),
        align=align)
    s_logits = student(input_ids=ids).logits
    t_logits = teacher(input_ids=t_ids).logits
    expected = 0.0
    for row in range(2):
        for pos in range(1, 9):
            if labels[row, pos] != IGNORE_INDEX and align[row, pos] >= 1:
                expected = expected + uld_by_definition(
                    s_logits[row, pos - 1][None], t_logits[row, align[row, pos] - 1][None], 1.0)[0]
    assert loss.item() == pytest.approx(float(expected.detach()) / n, rel=1e-8)
