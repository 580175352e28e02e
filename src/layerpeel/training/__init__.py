"""Training a GPT into a run folder: the trainer, the run folder, safetensors checkpoints."""
