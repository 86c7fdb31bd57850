"""Encoder pretraining settings, apart from the trainer so task files can hold them without
importing JAX (``hilrl.learning.pretrain`` re-exports it)."""

from __future__ import annotations

from dataclasses import dataclass

# The hindsight label of the encoder's 3-d read-out (see hilrl.learning.pretrain):
# final_pose: where the demonstrator's hand ended the task (any task whose demos succeed);
# grasp_point: where it closed the gripper for good (picks only); none: no read-out loss.
READOUTS = ("final_pose", "grasp_point", "none")


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 500
    batch_size: int = 64
    lr: float = 3e-3
    bc_weight: float = 0.3
    success_weight: float = 0.5
    object_weight: float = 300.0  # metres: a 1 cm error costs 0.03, ~ the BC term
    color_jitter: float = 0.2  # brightness and colour gains (never shifts: positions count)
    readout: str = "grasp_point"
    # Time-contrastive loss (no labels): a frame's embedding must find a frame at most
    # contrastive_window steps away in its episode among the batch. 0: off.
    contrastive_weight: float = 0.0
    contrastive_window: int = 3
    contrastive_temperature: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.readout not in READOUTS:
            raise ValueError(f"unknown encoder read-out {self.readout!r}; one of {READOUTS}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be at least 1")
        if self.contrastive_weight < 0 or self.contrastive_window < 1 or \
                self.contrastive_temperature <= 0:
            raise ValueError("contrastive_weight must be >= 0, contrastive_window >= 1 and "
                             "contrastive_temperature > 0")
