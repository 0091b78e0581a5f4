"""fedscore: protocols package."""
