"""Execution backends for encoder graphs. Each one takes the padded int64 inputs of a batch and
returns float32 ``[batch, dim]``; the Encoder owns tokenization, batching and ordering."""
