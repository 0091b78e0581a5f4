"""fedscore: models package."""
