"""What hilrl keeps on disk and reads back: episode datasets, weights files, agent
checkpoints, and the atomic/durable file helpers under them. No pickle anywhere."""
