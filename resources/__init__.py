"""One module per backend; `settings` is the one place that chooses embedded or production."""
