"""Freeze trained checkpoints with paddle.jit.save into the versioned model repository."""
