"""SAC/RLPD hyperparameters, apart from the agent so task files can hold them without
importing JAX (``hilrl.learning.sac`` re-exports it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class SACConfig:
    """Every hyperparameter of the agent. Frozen and hashable: it is static under jit."""

    # Critic ensemble (RLPD: 10 members, min over a random 2). On a CPU, 2 members (with
    # min over both) is ~3x faster (:meth:`cpu`), but with a learned reward and a person
    # driving most steps it let Q overestimate and learning stall where 10 learned
    # (tasks/sim_pick_cube_pixels_cpu.yaml says by how much).
    num_critics: int = 10
    num_min_critics: int = 2  # M: target = min over a random subset of M members
    discount: float = 0.97  # per task: ~1 - 1/horizon; 0.97 suits 10 Hz, ~100-step episodes
    tau: float = 0.005  # soft target update, every critic step
    # The actors run a slow copy of the policy: the target critic's encoder and an
    # exponential moving average of the actor at this rate per update (1.0: the latest
    # actor and encoder). SAC's policy swings between nearby updates; an evaluation of the
    # latest weights measured that swing as much as the policy.
    policy_tau: float = 0.005
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    temperature_lr: float = 3e-4
    # HIL-SERL's 1e-2, not RLPD's 1.0: with sparse 0/1 rewards Q is O(1), and alpha = 1 would
    # make the first thousands of actor steps pure entropy maximisation. It is learned anyway.
    init_temperature: float = 1e-2
    target_entropy: float | None = None  # None: -|A|/2 over the continuous action dims
    backup_entropy: bool = False  # entropy bonus in the target (off for sparse rewards)
    utd: int = 2  # critic steps per actor step, all in one jitted update() call
    # None: a Python-unrolled loop on CPU, lax.scan elsewhere. On XLA:CPU an unrolled loop ran
    # lax-conv gradient updates 7-24x faster than scan (with conv_impl="matmul" the two are
    # close); scan compiles faster for large utd.
    critic_steps_unrolled: bool | None = None
    hidden_dims: tuple[int, ...] = (256, 256)  # actor, each critic, gripper critic
    layer_norm: bool = True
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    # Observation encoder, see networks.ObservationEncoder.
    encoder: str = "conv"  # "conv" | "resnet10"
    conv_features: tuple[int, ...] = (32, 32, 32, 32)
    conv_strides: tuple[int, ...] = (2, 2, 2, 2)  # see networks.ConvEncoder
    # hilrl.learning.conv.Conv implementation: "lax" | "matmul" | "auto": per layer shape,
    # whichever was faster on this machine (timed once; bench/learner_speed.py prints each).
    conv_impl: str = "auto"
    pooling: str = "spatial_embedding"  # | "spatial_softmax" | "max_mean"
    num_spatial_features: int = 8
    bottleneck_dim: int = 256
    proprio_hidden: tuple[int, ...] = (64,)
    latent_dim: int = 256
    augment_pad: int = 4  # DrQ random shift in pixels; 0 turns augmentation off
    # HIL-SERL's hybrid agent: the last action entry is a discrete gripper command with its
    # own double-DQN critic; the continuous actor and critics cover the other entries.
    discrete_gripper: bool = False
    grasp_penalty_weight: float = 1.0  # gripper reward = reward + weight * grasp_penalty
    # A temporal auxiliary loss for the encoder, added to the critic's (hilrl.learning
    # .temporal): "none", "taco" or "spr", weighted by aux_weight; aux_dim: its projections.
    aux_loss: str = "none"
    aux_weight: float = 1.0
    aux_dim: int = 64
    # Dormant units (hilrl.learning.dormant): a unit whose mean |activation| is at most this
    # share of its layer's mean is dormant (DrM's tau). Every run logs each network's ratio.
    dormant_threshold: float = 0.025
    # DrM's shrink-and-perturb, off at 0: every perturb_every updates each network becomes
    # f * itself + (1 - f) * a fresh initialisation, f = clip(1 - perturb_rate * the actor's
    # dormant ratio, perturb_min, perturb_max), and its optimiser starts over (DrM's values).
    perturb_every: int = 0
    perturb_rate: float = 2.0
    perturb_min: float = 0.2
    perturb_max: float = 0.9
    # DrM's dormant-ratio-guided exploitation, off at 0: the TD target's next value becomes
    # lam * V(s') + (1 - lam) * Q'(s', a'), V an upper expectile (exploit_expectile) of the
    # critics' Q over the replay's own actions (the person's among them), and
    # lam = exploit_lambda / (1 + exp(exploit_temperature * (the actor's dormant ratio -
    # target_dormant_ratio))): a network that has woken up exploits what worked. DrM: 0.6.
    exploit_lambda: float = 0.0
    exploit_expectile: float = 0.7
    exploit_temperature: float = 50.0
    target_dormant_ratio: float = 0.2
    # Adaptive replay ratio (Ma et al. 2024, "Revisiting Plasticity in Visual RL"), off at 0:
    # start at utd and raise it once to utd_high when the critic's plasticity has recovered,
    # i.e. its share of units that are not dormant changed by at most utd_tolerance
    # (relative) between two checks utd_check_every updates apart. Two compiled updates.
    # The share is measured on one batch and moves in steps of one unit (1/1024 for two
    # 256x256 critics), hence a 1% tolerance.
    utd_high: int = 0
    utd_check_every: int = 1000
    utd_tolerance: float = 0.01

    # Keys task files may still hold, and what replaced them (hilrl.config.io reports these
    # instead of "unknown key"). A frozen image encoder has one switch: env.frozen_encoder.
    __moved_keys__: ClassVar[dict[str, str]] = {
        "freeze_backbone": "was removed; use env.frozen_encoder (make one with hilrl "
                           "pretrain-encoder): the actor runs the frozen encoder once per "
                           "frame and its features travel as state",
    }

    def __post_init__(self) -> None:
        if self.encoder == "features":
            raise ValueError("encoder 'features' was removed; use env.frozen_encoder (make one "
                             "with hilrl pretrain-encoder): its features travel as state")
        if self.encoder not in ("conv", "resnet10"):
            raise ValueError(f"encoder must be 'conv' or 'resnet10', got {self.encoder!r}")
        if not 1 <= self.num_min_critics <= self.num_critics:
            raise ValueError(f"need 1 <= num_min_critics ({self.num_min_critics}) <= "
                             f"num_critics ({self.num_critics})")
        if self.utd < 1:
            raise ValueError(f"utd must be >= 1, got {self.utd}")
        if not 0.0 < self.discount <= 1.0 or not 0.0 < self.tau <= 1.0 \
                or not 0.0 < self.policy_tau <= 1.0:
            raise ValueError("discount, tau and policy_tau must be in (0, 1]")
        if self.init_temperature <= 0:
            raise ValueError("init_temperature must be > 0")
        if not 0.0 <= self.exploit_lambda <= 1.0 or not 0.0 < self.exploit_expectile < 1.0:
            raise ValueError("need 0 <= exploit_lambda <= 1 and 0 < exploit_expectile < 1, got "
                             f"{self.exploit_lambda}, {self.exploit_expectile}")
        if self.aux_loss not in ("none", "taco", "spr"):
            raise ValueError(f"aux_loss must be 'none', 'taco' or 'spr', got {self.aux_loss!r}")
        if self.utd_high and (self.utd_high < self.utd or self.utd_check_every < 1):
            raise ValueError(f"utd_high ({self.utd_high}) must be 0 (off) or >= utd "
                             f"({self.utd}), with utd_check_every >= 1")
        if self.perturb_every < 0 or not 0.0 <= self.perturb_min <= self.perturb_max <= 1.0:
            raise ValueError("need perturb_every >= 0 (0: off) and 0 <= perturb_min <= "
                             f"perturb_max <= 1, got {self.perturb_every}, "
                             f"{self.perturb_min}, {self.perturb_max}")

    @classmethod
    def cpu(cls, **overrides: Any) -> SACConfig:
        """Smaller defaults for a laptop CPU: 2 critics (min over both)."""
        return cls(**{"num_critics": 2, "num_min_critics": 2, **overrides})
