"""Learner agents: SAC/RLPD (:mod:`hilrl.agents.sac`) and behaviour cloning
(:mod:`hilrl.agents.bc`), each a config dataclass, an immutable state pytree and pure jitted
``update`` / ``sample_actions`` functions."""

from hilrl.agents import bc, sac
from hilrl.agents.bc import BCConfig, BCState
from hilrl.agents.sac import Policy, SACConfig, SACState

__all__ = ["BCConfig", "BCState", "Policy", "SACConfig", "SACState", "bc", "sac"]
