"""Data: sources, the canonical tables, the tf.data input pipeline, TFRecord preparation."""
