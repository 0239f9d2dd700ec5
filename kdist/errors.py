"""Errors the CLI reports in one line instead of a traceback."""


class UsageError(Exception):
    """Bad input (data rows, paths, incompatible settings), described in one line: exit 2."""


class StageFailed(RuntimeError):
    """A stage ran but its result is not good enough to go on (e.g. too few rows answered);
    the message says why and what a rerun does: exit 1."""


def one_line_cause(error: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first error of one of `kinds` in `error`'s chain. Ray wraps an exception raised in
    a worker (RayTaskError, Ray Data's UserCodeException) and keeps the original as `cause`
    or `__cause__`; the CLI reports that original in its own one line."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, kinds) and not _is_ray_wrapper(current):
            return current
        current = getattr(current, "cause", None) or current.__cause__ or current.__context__
    return None


def _is_ray_wrapper(error: BaseException) -> bool:
    # RayTaskError subclasses the user's exception type too, with a traceback as its text.
    return type(error).__name__.startswith("RayTaskError")
