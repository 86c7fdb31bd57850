"""hilrl: human-in-the-loop reinforcement learning for robot arms."""

__version__ = "0.1.0"
