"""Rendering third-party jailbreak templates: Jinja2's immutable sandbox, so a template can read ``prompt`` and
nothing else (a template reaching Python internals is refused), and a failure names the template, never its text."""

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


def apply_template(template: Record, goal: str) -> str:
    mode = template.meta.get("mode", "jinja")
    if mode == "append":  # a persona prompt, then the request
        return f"{template.prompt}\n\n{goal}"
    if mode == "suffix":  # an adversarial suffix after the request
        return f"{goal} {template.prompt}"
    return render_template(template, goal)
