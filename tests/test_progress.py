"""The shared progress line: rate since the previous line, ETA, when it prints."""

import io

from flamingo_jax import progress


def test_line_rate_eta_and_when_it_prints(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    out = io.StringIO()
    p = progress.Progress("[train] step", 600, start=100, every=10.0, stream=out)
    p.count(20)
    now[0] += 5.0
    assert not p.due()
    p.update(0)  # not due, not finished: nothing
    assert out.getvalue() == ""
    now[0] += 5.0  # 20 steps in 10 s
    assert p.due()
    p.show(loss=2.3451)
    assert out.getvalue() == "[train] step 120/600 (20%)  2 steps/s  loss 2.345  ETA 4:00\n"
    p.count(480)
    now[0] += 60.0
    p.update(0)  # finished: always printed
    assert out.getvalue().splitlines()[-1] == "[train] step 600/600 (100%)  8 steps/s  ETA 0:00"


def test_disabled_prints_nothing_and_eta_format(capsys):
    p = progress.Progress("[x]", 2, enabled=False)
    p.update(2)
    p.show()
    assert not p.due()
    assert capsys.readouterr().out == ""
    assert progress.format_eta(154) == "2:34"
    assert progress.format_eta(3 * 3600 + 61) == "3:01:01"
    assert progress.format_eta(float("inf")) == "?"
