"""trainer/progress.py: a live bar on a terminal, plain lines anywhere else."""

import io

from trainer.progress import Progress, is_terminal


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_plain_lines_when_the_stream_is_not_a_terminal():
    stream = io.StringIO()
    progress = Progress(20, unit="example", label="explain", stream=stream)
    for _ in range(20):
        progress.advance()
    progress.close()  # already finished: writes nothing more
    out = stream.getvalue()
    assert "\r" not in out and "\x1b" not in out and "\b" not in out
    assert out.endswith("\n")
    lines = out.splitlines()
    assert len(lines) == 10  # one a tenth, the last one the final line
    assert lines[0].startswith("explain: 2/20 examples (10%), ")
    assert lines[-1].startswith("explain: 20/20 examples done in ") and lines[-1].endswith(" s")


def test_plain_lines_for_few_items_and_an_early_close():
    stream = io.StringIO()
    progress = Progress(3, unit="example", stream=stream)
    progress.advance()
    progress.close()  # interrupted
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("1/3 examples (33%)")
    assert lines[-1].startswith("1/3 examples done in ")
    assert "\r" not in stream.getvalue()


def test_a_terminal_gets_the_live_bar():
    stream = FakeTerminal()
    assert is_terminal(stream) and not is_terminal(io.StringIO())
    progress = Progress(4, unit="example", stream=stream)
    for _ in range(4):
        progress.advance()
    out = stream.getvalue()
    assert out.count("\r") >= 4  # redrawn in place
    assert "\n" not in out[:-1] and out.endswith("\n")  # one line, ended when done
    assert "4/4 [" in out
