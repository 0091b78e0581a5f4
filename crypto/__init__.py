"""fedscore: crypto package."""
