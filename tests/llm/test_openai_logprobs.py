"""The teacher's top-k from OpenAI-format logprobs: ids when the server names tokens by id,
otherwise the strings with the character where each generated token starts in the answer."""

from __future__ import annotations

from kdist.llm.remote import top_logprobs_from_openai


def position(token: str, alternatives: list[tuple[str, float]], raw: bytes | None = None) -> dict:
    return {"token": token, "logprob": alternatives[0][1],
            "bytes": list(raw) if raw is not None else list(token.encode()),
            "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())}
                             for t, v in alternatives]}


def test_text_tokens_are_stored_with_their_strings_and_character_offsets():
    # "é" is two bytes, generated as two byte-level tokens: the second starts inside it.
    text = "caf\u00e9 ok!"
    content = [position("caf", [("caf", -0.1), ("ca", -2.5)]),
               position("\\xc3", [("\\xc3", -0.2)], raw=b"\xc3"),
               position("\\xa9", [("\\xa9", -0.3)], raw=b"\xa9"),
               position(" ok", [(" ok", -0.4), (" OK", -1.0), (" ok", -3.0)]),
               position("!", [("!", -0.5)])]
    entries = top_logprobs_from_openai(content, text)
    assert [e["offset"] for e in entries] == [0, 3, None, 4, 7]
    assert [e["token"] for e in entries] == ["caf", "\\xc3", "\\xa9", " ok", "!"]
    assert entries[3]["tokens"] == [" ok", " OK", " ok"]  # as sent: merged by the trainer
    assert entries[3]["logprobs"] == [-0.4, -1.0, -3.0] and entries[3]["token_ids"] == []


def test_offsets_stop_where_the_tokens_no_longer_spell_the_answer():
    content = [position("Yes", [("Yes", -0.1)]), position(" no", [(" no", -0.2)]),
               position(" sir", [(" sir", -0.3)])]
    entries = top_logprobs_from_openai(content, "Yes, sir")
    assert [e["offset"] for e in entries] == [0, None, None]


def test_token_id_names_still_give_ids():
    content = [{"token": "token_id:5", "logprob": -0.1, "bytes": None,
                "top_logprobs": [{"token": "token_id:5", "logprob": -0.1},
                                 {"token": "token_id:9", "logprob": -2.0}]}]
    assert top_logprobs_from_openai(content, "x") == [{"token_ids": [5, 9],
                                                       "logprobs": [-0.1, -2.0]}]
    assert top_logprobs_from_openai(None, "x") is None
