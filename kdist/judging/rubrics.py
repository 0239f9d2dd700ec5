"""Rubrics: what the judge is asked, as Jinja2 templates beside this module (templates/).

A rubric names its template, whether it grades one answer (a score on a scale) or compares
two (a verdict), and what it needs: a reference answer (only reference-guided grading of
training data; never in comparisons on held-out splits) or a context passage (the RAG
rubrics). `judge.template` in the config replaces a rubric's template with a user's file;
the variables stay the same.

Variables: question (the conversation up to the answer), context, reference, answer (single
grading), answer_a / answer_b (pairwise), scale_low / scale_high.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import jinja2

from kdist import templating

TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class Rubric:
    name: str
    pairwise: bool = False
    uses_reference: bool = False
    needs_context: bool = False


RUBRICS: dict[str, Rubric] = {
    rubric.name: rubric
    for rubric in (
        Rubric("correctness"),
        Rubric("reference_guided", uses_reference=True),
        Rubric("context_relevance", needs_context=True),
        Rubric("groundedness", needs_context=True),
        Rubric("answer_relevance"),
        Rubric("pairwise", pairwise=True),
    )
}
SINGLE_RUBRICS = tuple(name for name, rubric in RUBRICS.items() if not rubric.pairwise)


def load_template(rubric: str, replacement: str | None = None) -> jinja2.Template:
    """The rubric's template, or the user's file that replaces it. StrictUndefined: a
    template that names a variable the judge does not have fails, instead of rendering ''."""
    path = Path(replacement).expanduser() if replacement else TEMPLATES / f"{rubric}.j2"
    return templating.load_file(path, "judge.template")


def prompt_context(meta_json: str | None) -> str | None:
    """The context passage a task stored with a prompt (`meta.context`: qa's passage or
    retrieved chunk), which the RAG rubrics and comparisons show the judge."""
    return json.loads(meta_json or "{}").get("context")


def conversation_text(messages: list[dict[str, str]]) -> str:
    """The prompt as the judge reads it: the user's turns (and earlier assistant turns),
    without the system prompt the answering model got."""
    turns = [m for m in messages if m["role"] != "system"]
    if len(turns) == 1:
        return turns[0]["content"]
    return "\n".join(f"{m['role'].upper()}: {m['content']}" for m in turns)
