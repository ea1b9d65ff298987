"""Training: data cache, augmentation, the training loop and safetensors checkpoints."""
