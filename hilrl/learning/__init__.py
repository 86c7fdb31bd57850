"""The learning math: agents (SAC/RLPD, BC), their networks and encoders, the replay buffer,
encoder pretraining and the reward classifier. Pure functions and jitted updates; no I/O
beyond the files they load."""
