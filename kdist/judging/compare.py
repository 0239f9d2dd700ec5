"""Two models' answers to the same prompts, compared by an LLM judge in both orders.

For each prompt the judge gets the pairwise rubric twice, (A=first, B=second) and swapped,
as two requests of the batch-inference layer keyed (id, "<first>|<second>|<order>"), so a
rerun asks nothing twice. The verdicts are combined and summarised by kdist.judging.pairwise.
The rows compared are few (a held-out split), so they are handled in the driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from kdist.endpoints import Endpoint
from kdist.judging.pairwise import PairwiseResult, combine_orders, summarize
from kdist.judging.rubrics import conversation_text, load_template, prompt_context
from kdist.judging.verdicts import parse_verdict
from kdist.llm.batch import run_inference
from kdist.rows import REQUEST_SCHEMA

IN_ORDER, SWAPPED = "ab", "ba"


@dataclass(frozen=True)
class Compared:
    """One prompt's comparison: the verdict of each order, the outcome and the judge's words."""

    id: str
    verdict_in_order: str | None
    verdict_swapped: str | None
    outcome: str | None  # first | second | tie | None (invalid)
    flipped: bool
    rationale: str


def compare(
    rows: list[dict[str, Any]],
    first: str,
    second: str,
    judge: Endpoint,
    store_uri: str,
    *,
    template: str | None = None,
    seed: int = 0,
) -> tuple[PairwiseResult, list[Compared]]:
    """`rows`: id, messages, meta (JSON) and `answers` {model name: text}, for both models."""
    import ray.data

    requests = comparison_requests(rows, first, second, template)
    result = run_inference(ray.data.from_arrow(requests), judge, store_uri, expected_rows=requests.num_rows,
                           label=f"judge {first} vs {second}")  # fmt: skip
    answers = {
        (row["id"], row["candidate"]): row
        for row in result.store.read_all(["id", "candidate", "response", "error"]).to_pylist()
    }
    compared = [_combined(row["id"], answers, _key(first, second)) for row in rows]
    lengths = [len(row["answers"][first]) - len(row["answers"][second]) for row in rows]
    summary = summarize([c.outcome for c in compared], [c.flipped for c in compared], lengths, seed=seed)
    return summary, compared


def comparison_requests(rows: list[dict[str, Any]], first: str, second: str, template: str | None) -> pa.Table:
    prompt = load_template("pairwise", template)
    requests = []
    for row in rows:
        question = conversation_text(row["messages"])
        context = prompt_context(row.get("meta"))
        a, b = row["answers"][first], row["answers"][second]
        for order, (shown_a, shown_b) in ((IN_ORDER, (a, b)), (SWAPPED, (b, a))):
            text = prompt.render(question=question, context=context, answer_a=shown_a, answer_b=shown_b)
            requests.append({"id": row["id"], "candidate": f"{_key(first, second)}|{order}",
                             "messages": [{"role": "user", "content": text}]})  # fmt: skip
    return pa.Table.from_pylist(requests, schema=REQUEST_SCHEMA)


def _key(first: str, second: str) -> str:
    return f"{first}|{second}"


def _combined(row_id: str, answers: dict[tuple[str, str], dict[str, Any]], key: str) -> Compared:
    in_order, swapped = (answers.get((row_id, f"{key}|{order}")) for order in (IN_ORDER, SWAPPED))
    verdicts = [parse_verdict(a["response"]) if a and not a["error"] else None for a in (in_order, swapped)]
    outcome, flipped = combine_orders(*verdicts)
    rationale = " / ".join((a["response"] or a["error"] or "").strip()[:300] for a in (in_order, swapped) if a)
    return Compared(row_id, verdicts[0], verdicts[1], outcome, flipped, rationale)
