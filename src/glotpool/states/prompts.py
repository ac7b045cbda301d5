"""Prompt templates: wrap each text in an instruction before the frozen backbone reads it.

A template is a string holding the slot ``{text}`` once or twice. :func:`fill_prompt` replaces every slot with the
text and returns the character span of the LAST copy, the one that is pooled: for PromptEOL the only copy, for
"echo" prompting (Springer et al., 2024) the second copy, whose causal states have already seen the whole text once.

    prompteol   This sentence : "{text}" means in one word:"        (Jiang et al., 2023; pool the last token)
    echo        Rewrite the sentence: {text}\\nRewritten sentence: {text}

Slots are filled by plain string replacement, never ``str.format``: user texts may contain braces.
"""
from __future__ import annotations

SLOT = "{text}"

PROMPTS = {
    "prompteol": 'This sentence : "{text}" means in one word:"',
    "echo": 'Rewrite the sentence: {text}\nRewritten sentence: {text}',
}


def resolve_prompt(name_or_template: str | None) -> str | None:
    """A preset name (:data:`PROMPTS`) -> its template; a template with ``{text}`` once or twice -> itself;
    ``None`` / ``""`` -> ``None`` (no prompt). Anything else -> ValueError explaining the two forms."""
    if name_or_template is None or name_or_template == "":
        return None
    if not isinstance(name_or_template, str):
        raise ValueError(f"prompt must be a preset name or a template string, got {type(name_or_template).__name__}")
    if name_or_template in PROMPTS:
        return PROMPTS[name_or_template]
    if name_or_template.count(SLOT) in (1, 2):
        return name_or_template
    n = name_or_template.count(SLOT)
    raise ValueError(
        f"prompt {name_or_template[:80]!r} is neither a preset ({', '.join(sorted(PROMPTS))}) nor a template: a "
        f"template must contain the slot {SLOT} once or twice (it holds {n}); the text is put in each slot and the "
        f"last copy is the one pooled, e.g. 'Query: {SLOT}' or {PROMPTS['prompteol']!r}")


def fill_prompt(template: str, text: str) -> tuple[str, tuple[int, int]]:
    """Put ``text`` into every ``{text}`` slot -> ``(prompted_text, (char_start, char_end))``, the span of the last
    copy: ``prompted_text[char_start:char_end] == text``."""
    parts = template.split(SLOT)
    if len(parts) < 2:
        raise ValueError(f"prompt template {template[:80]!r} has no {SLOT} slot; resolve it with resolve_prompt")
    head = text.join(parts[:-1])  # the template up to the last slot, earlier slots filled
    start = len(head)
    return head + text + parts[-1], (start, start + len(text))


__all__ = ["PROMPTS", "SLOT", "resolve_prompt", "fill_prompt"]
