"""When the planner should be told to use fewer threads."""


def test_thread_advice_speaks_only_when_the_cores_are_taken(monkeypatch):
    from trajectory import cpu
    monkeypatch.setattr(cpu.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(cpu.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    assert cpu.thread_advice(2) is None  # an idle machine
    monkeypatch.setattr(cpu.os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    assert "threads=1" in cpu.thread_advice(2)  # one core busy elsewhere, two threads here
    assert cpu.thread_advice(1) is None  # one thread fits beside it
