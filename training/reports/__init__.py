"""What a person reads: the evaluation report in markdown, its plots, and the model
card's sections."""
