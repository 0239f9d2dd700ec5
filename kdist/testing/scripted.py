"""Scripted answers for the loopback server: what a test wants a model to say, by rule.

A rule is (pattern, reply): the first rule whose regular expression is found in the last
message's text answers, its reply expanded with the match's groups (`\\1`, `\\g<name>`), so a
test can make a question writer or a judge answer in the shape it means to test (a JSON list,
a chatty numbered list, a refusal) from what the prompt holds. Prompts no rule matches get the
server's default answer. A reply may be a list: the n-th request of the same messages gets its
n-th item (cycling), as a sampled model answers one prompt differently each time.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

Rule = Sequence[Any]  # (pattern, reply or list of replies); a list after a JSON round trip


def reply(rules: Sequence[Rule], messages: list[dict[str, Any]], nth: int = 1) -> str | None:
    """The scripted reply to these messages, asked for the `nth` time (1-based), or None when
    no rule matches."""
    text = str(messages[-1].get("content", "")) if messages else ""
    for pattern, template in rules:
        match = re.search(pattern, text, re.DOTALL)
        if match:
            if not isinstance(template, str):
                template = template[(nth - 1) % len(template)]
            return match.expand(template)
    return None
