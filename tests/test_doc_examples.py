"""Every YAML example in README.md and docs/*.md that is a run config (or a fragment of one) validates.

Why: a documented example that the config rejects (as the OpenRouter one once did with
`teacher.extra_body: Extra inputs are not permitted`) sends a new user away at the first step. A
fenced ```yaml block whose top-level keys include any RunConfig section is validated as a whole
config (every section has defaults, so a fragment is a config); a block with none of them (an
accelerate file, a data record) is not a run config and is left alone.

Run: .venv/bin/python -m pytest tests/test_doc_examples.py -q
"""

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from reasondistill.config import RunConfig, format_validation_error, load_yaml

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```ya?ml[ \t]*\n(.*?)^```", re.M | re.S)


def yaml_blocks():
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        for m in BLOCK.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            yield f"{doc.relative_to(REPO)}:{line}", m.group(1)


def config_blocks():
    out = []
    for where, body in yaml_blocks():
        data = load_yaml(body)
        if isinstance(data, dict) and set(data) & set(RunConfig.model_fields):
            out.append(pytest.param(data, id=where))
    return out


CONFIG_BLOCKS = config_blocks()


def test_the_docs_have_config_examples():
    assert len(CONFIG_BLOCKS) >= 10  # the pattern finds them (README, teachers, tasks, scaling)


@pytest.mark.parametrize("data", CONFIG_BLOCKS)
def test_documented_config_example_validates(data, request):
    try:
        RunConfig.model_validate(data)
    except ValidationError as err:
        pytest.fail(format_validation_error(err, request.node.callspec.id))


def test_every_yaml_block_parses():
    for where, body in yaml_blocks():
        load_yaml(body)  # a YAML error names the block through the traceback's `where`
