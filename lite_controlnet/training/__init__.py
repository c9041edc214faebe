"""Training: the config, the trainer, its hardware plan, latent cache, checkpoints, lock, logs and grids."""
