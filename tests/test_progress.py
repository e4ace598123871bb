"""progress.py off a terminal (pytest's captured stderr is not one): plain lines, at most one per
interval and one at the end; nothing when disabled."""

from reasondistill.progress import _clock, progress_bar


def test_off_a_terminal_progress_is_plain_lines(capsys):
    with progress_bar("generate", 10, completed=2, every_s=0.0) as advance:
        advance(3)
        advance(5)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("generate: 5/10 (50%), elapsed ") and "left" in lines[0]
    assert lines[-1].startswith("generate: 10/10 (100%), elapsed ") and "left" not in lines[-1]
    with progress_bar("train s", 10, every_s=3600.0) as advance:  # within the interval: the final line only
        for _ in range(10):
            advance(1)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("train s: 10/10 (100%)")
    with progress_bar("quiet", 10, enabled=False) as advance:
        advance(10)
    assert capsys.readouterr().err == ""
    assert (_clock(5), _clock(65), _clock(3725)) == ("5s", "1m05s", "1h02m05s")
