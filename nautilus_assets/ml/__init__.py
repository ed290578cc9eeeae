"""ML domain: the `ml_predictions` product (MLX model of the next 1-minute bar's direction, versioned)."""
