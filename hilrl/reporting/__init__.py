"""Training logs (JSON lines, TensorBoard, wandb) and the plots of ``hilrl report``."""
