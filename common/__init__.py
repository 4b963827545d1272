"Training core: Learner, callbacks, schedules, optimizers, metrics, checkpoints."
