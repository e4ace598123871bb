"""Prompts as a model sees them: a problem's text (and an optional system prompt) in the chat template.

Why: the teachers (sampling traces), the data builder (tokenising training examples), evaluation
and the server must render a prompt identically, or a student trains on one format and is tested
on another. This module is that one rendering, at the bottom layer, so a teacher need not import
the data builder to get it.

    render_prompts(tokenizer, ["47+5*3"], system="Think step by step.")
"""

from __future__ import annotations


def render_prompts(tokenizer, prompts: list[str], system: str | None = None) -> list[str]:
    """Each prompt as a user turn (after ``system``, if given), with the generation prompt appended."""
    rendered = []
    for prompt in prompts:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        rendered.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return rendered
