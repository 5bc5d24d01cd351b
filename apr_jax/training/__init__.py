"""Training: one run of a config (run), the one loop SFT and RL share (loop),
the SFT task, the train state, step, update, loss, optimizer and step budget."""
