"""When the planner should be told to use fewer threads."""


def test_thread_advice_speaks_only_when_the_cores_are_taken(monkeypatch):
    from trajectory import cpu
    monkeypatch.setattr(cpu.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(cpu, "runnable_elsewhere", lambda: None)  # the load average alone
    monkeypatch.setattr(cpu.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    assert cpu.thread_advice(2) is None  # an idle machine
    monkeypatch.setattr(cpu.os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    assert "threads=1" in cpu.thread_advice(2)  # one core busy elsewhere, two threads here
    assert cpu.thread_advice(1) is None  # one thread fits beside it
    monkeypatch.setattr(cpu.os, "getloadavg", lambda: (2.0, 2.0, 2.0))
    assert "threads=1" not in cpu.thread_advice(1)  # busy, but one thread is already the least
    assert "other work ends" in cpu.thread_advice(1)


def test_work_that_has_ended_is_not_taken_for_a_busy_cpu(monkeypatch):
    """The load average still counts training that ended a minute ago (make demo's own); the
    count of tasks runnable now does not."""
    from trajectory import cpu
    monkeypatch.setattr(cpu.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(cpu.os, "getloadavg", lambda: (2.0, 1.5, 0.8))
    monkeypatch.setattr(cpu, "runnable_elsewhere", lambda: 0.0)
    assert cpu.thread_advice(2) is None
    monkeypatch.setattr(cpu, "runnable_elsewhere", lambda: 2.0)  # still busy now
    assert "threads=1" not in cpu.thread_advice(1) and cpu.thread_advice(1) is not None

