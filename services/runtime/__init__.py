"""Model runtime shared by workers, export and evaluation: tokenizer, model repository, Paddle Inference runner."""
