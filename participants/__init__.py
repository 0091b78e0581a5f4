"""fedscore: participants package."""
