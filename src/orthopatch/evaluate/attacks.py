"""Jailbreak templates rendered in Jinja2's sandbox (third-party templates never get Python internals)."""

from __future__ import annotations

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from orthopatch.data.schema import Record
from orthopatch.errors import UserError

_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


def render_template(template: Record, goal: str) -> str:
    """Render one template with ``prompt`` = goal; a template that fails or breaks the sandbox is an error."""
    try:
        return _ENV.from_string(template.prompt).render(prompt=goal)
    except (TemplateError, ArithmeticError, RecursionError, TypeError, ValueError, LookupError) as error:
        # SecurityError (an attribute reaching Python internals) is a TemplateError; the sandbox's range cap
        # raises OverflowError. The message names the template, never its text.
        raise UserError(f"template {template.id} failed to render ({type(error).__name__})") from None


def wrap(goals: list[Record], templates: list[Record], max_chars: int = 2000) -> tuple[list[Record], int]:
    """Each goal wrapped in one template (round robin over those that take only ``prompt``), skipping renders longer
    than ``max_chars`` instead of truncating them; returns the wrapped records and the number skipped."""
    usable = [t for t in templates if t.meta.get("parameters", ["prompt"]) == ["prompt"]]
    if not usable:
        raise UserError("no usable jailbreak templates (each must take exactly one parameter, 'prompt')")
    out, skipped = [], 0
    for i, goal in enumerate(goals):
        template = usable[i % len(usable)]
        text = render_template(template, goal.prompt)
        if len(text) > max_chars:
            skipped += 1
            continue
        out.append(Record(id=f"{goal.id}|{template.id}", prompt=text, meta={"family": template.meta.get("family")}))
    return out, skipped
