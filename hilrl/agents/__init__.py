"""Learner agents: SAC/RLPD (:mod:`hilrl.agents.sac`) and behaviour cloning
(:mod:`hilrl.agents.bc`), each a config dataclass, an immutable state pytree and pure jitted
``update`` / ``sample_actions`` functions. Import the submodules; this package imports nothing,
so ``hilrl.agents.sac_config`` stays free of JAX."""
