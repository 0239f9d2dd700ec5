"""Prompt templates that a user can replace with a file of their own (Jinja2).

StrictUndefined: a template that names a variable its caller does not pass fails, instead of
rendering '' into a prompt that is then sent and paid for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta

from kdist.errors import UsageError


def load_file(path: Path, field: str, variables: Collection[str] | None = None) -> jinja2.Template:
    """The template in `path`; a missing file, bad syntax or (when `variables` is given) a
    variable its caller does not pass is one line naming `field`, before anything renders."""
    try:
        text = path.read_text()
    except OSError as err:
        raise UsageError(f"{field}: cannot read {path} ({err.strerror})") from None
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    try:
        parsed = environment.parse(text)
    except jinja2.TemplateSyntaxError as err:
        raise UsageError(f"{field}: {path} line {err.lineno}: {err.message}") from None
    unknown = sorted(jinja2.meta.find_undeclared_variables(parsed) - set(variables)) if variables is not None else []
    if unknown:
        raise UsageError(f"{field}: {path} uses '{unknown[0]}', which is not a variable here (variables: {', '.join(sorted(variables))})")
    return environment.from_string(text)


def by_content(settings: Any) -> Any:
    """`settings` (a config section as plain data) with every `template` that names a file
    replaced by a hash of the file's text, for fingerprints: a template is what it says, not
    where it lies. By path, an edit in place went unnoticed by --resume, and the same file in
    another place (a Ray job's working dir is a copy of the checkout) redid every stage."""
    if isinstance(settings, dict):
        return {key: _template_identity(value) if key == "template" else by_content(value)
                for key, value in settings.items()}  # fmt: skip
    if isinstance(settings, list | tuple):
        return [by_content(value) for value in settings]
    return settings


def _template_identity(value: Any) -> Any:
    if not isinstance(value, str):
        return value  # None: the packaged template
    path = Path(value).expanduser()
    if not path.is_file():
        return value  # no file (yet): the name is all there is; loading it reports the error
    return {"template_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
