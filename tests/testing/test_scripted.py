"""Scripted replies of the loopback server: the first matching rule answers, with its groups."""

from __future__ import annotations

import httpx

from kdist.testing.llm_server import LLMServer, ServerSettings

RULES = [[r"Passage:\n(\w+) (\w+)", r'["What is \1?", "Why \2?"]'], [r"refuse", "I cannot help with that."]]


def _reply(server: LLMServer, content: str) -> str:
    body = {"model": "m", "messages": [{"role": "user", "content": content}]}
    return httpx.post(server.openai_base_url + "/chat/completions", json=body, timeout=5).json()["choices"][0]["message"]["content"]


def test_rules_answer_in_order_with_groups_and_the_rest_get_the_echo():
    with LLMServer(ServerSettings(script=RULES)) as server:
        assert _reply(server, "Read this.\nPassage:\nPhotosynthesis converts light") == '["What is Photosynthesis?", "Why converts?"]'
        assert _reply(server, "Please refuse this") == "I cannot help with that."
        assert _reply(server, "say hi") == "ok: say hi"


def test_a_script_reaches_a_server_in_its_own_process():
    with LLMServer(ServerSettings(script=RULES), in_subprocess=True) as server:
        assert _reply(server, "now refuse") == "I cannot help with that."
