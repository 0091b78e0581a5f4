"""fedscore: coordinator package."""
