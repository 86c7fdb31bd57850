"""Learner and actors SIGKILLed at seeded random moments and resumed: nothing is lost,
nothing is stored twice, no checkpoint is left unloadable (harness: crash_schedule.py)."""

from __future__ import annotations

from crash_schedule import run_crash_schedule


def test_crash_schedule_keeps_every_transition_once_and_checkpoints_loadable(tmp_path):
    # Seed 0's first 4 victims: actor0, learner, learner, actor1.
    result = run_crash_schedule(tmp_path / "run", cycles=4, seed=0, wait_s=(2.0, 5.0))
    print(result.summary())  # shown by pytest on failure
    assert sum(result.kills.values()) == 4
    assert result.kills["learner"] >= 1
    assert result.log_transitions > 0 and result.killed_sessions
    assert not result.duplicates and result.duplicate_transitions == 0
    assert not result.holes and not result.log_problems
    assert result.kept_not_in_archive == 0
    # Replay == log, and the step counter is the sum of the steps.
    assert result.online == result.env_steps == result.log_transitions
    assert result.restored["demo"] == result.demo_steps + result.log_intervened
    # Sessions that ended without SIGKILL (learner kills included): nothing lost.
    assert len(result.clean_sessions) >= 2
    assert result.lost_from_live_sessions == 0
    assert result.learner_kills_survived >= 1  # actor0's last session lives through both
    assert not result.undelivered_spills
    assert result.checkpoints_checked and not result.corrupt_checkpoints
    assert all(code == 0 for code in result.exit_codes.values()), result.exit_codes
    assert result.ok, result.failures()
