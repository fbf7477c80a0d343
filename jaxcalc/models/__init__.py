"""Models as pure ``(init, apply)`` pairs over pytrees; flax NNX models cross in via nnx.split."""
