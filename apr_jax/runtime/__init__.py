"""What every layer runs on: device meshes and sharding, checkpoints, worker
processes, JSON lines and the metrics log."""
