"""Secrets out of what is printed and saved (redact.py): secret-looking key names, and the command
line the run directory's lock records."""

from reasondistill.redact import command_line, env_name_problem, secret_name


def test_secret_names_and_not_their_lookalikes():
    assert all(map(secret_name, ["api_key", "apiKey", "accessToken", "x-auth", "password"]))
    assert not any(map(secret_name, ["max_new_tokens", "max_tokens_field", "keep", "monkey"]))
    assert env_name_problem("OPENAI_API_KEY") is None and "sk-live" not in env_name_problem("sk-live-123")


def test_the_recorded_command_line_has_no_secret_values():
    line = command_line(["reasondistill", "generate", "c.yaml", "teacher.extra_body.api_key=sk-live-123",
                         "generate.max_new_tokens=64"])
    assert "sk-live-123" not in line and "teacher.extra_body.api_key=(not shown)" in line
    assert "generate.max_new_tokens=64" in line and line.startswith("reasondistill generate c.yaml")
