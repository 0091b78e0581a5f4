"""The ``fedscore`` console command: mounts the sub-commands each package defines."""
def main() -> None:
    print("fedscore")
