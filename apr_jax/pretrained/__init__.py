"""Pretrained checkpoints: Hugging Face safetensors, configs and tokenizers -> this project's model."""
